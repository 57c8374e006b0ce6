"""dtl-ray: discriminator-based transfer learning on images, at cluster scale, on Ray."""

__version__ = "0.1.0"
__all__ = ["submit", "__version__"]


def submit(*args, **kwargs):
    """Submits the pipeline as a Ray job; see `dtl_ray.submission.submit`."""
    from dtl_ray.pipeline.jobs import submit as _submit

    return _submit(*args, **kwargs)
