"""dtl-ray: discriminator-based transfer learning on images, at cluster scale, on Ray."""

__version__ = "0.2.0"
__all__ = ["submit", "__version__"]


def submit(*args, **kwargs):
    """Submits the pipeline as a Ray job; see `dtl_ray.pipeline.jobs.submit`."""
    from dtl_ray.pipeline.jobs import submit as _submit

    return _submit(*args, **kwargs)
