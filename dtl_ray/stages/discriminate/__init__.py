"""Stage 2: the domain discriminator (see `stage`)."""

from dtl_ray.stages.discriminate.stage import domain_rows, run

__all__ = ["run", "domain_rows"]
