"""Stage 5: fine-tuning with a Tune search (see `stage`)."""

from dtl_ray.stages.finetune.stage import run

__all__ = ["run"]
