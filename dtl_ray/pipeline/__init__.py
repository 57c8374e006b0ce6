"""The pipeline: the stages of `contract.registry` in order, skipping finished ones and resuming
the rest, then the report.

`pipeline.run(cfg)` runs it and `pipeline.check(cfg)` checks what a run checks before it starts
(`dtl-ray run --check`). Its modules: `preflight` (what is checked and resolved first),
`runner` (the stages in order), `fingerprints` (the settings a finished stage was made with),
`lease` (one run of a name at a time), `report`, `tracking` (MLflow, TensorBoard) and `jobs`
(the pipeline as a Ray job).
"""

from dtl_ray.pipeline.preflight import check
from dtl_ray.pipeline.runner import run

__all__ = ["run", "check"]
