"""The pipeline's stages, in order: one record each, the only place a stage is defined.

A record is data, not a class to inherit from: its name (which is also its module under
`dtl_ray.stages`, its folder in the run, its `--stages` name and its key in `report.json`), the
config sections its `run` takes, the config keys its outputs depend on, the type it returns and
its Ray Train runs. The run layout, the fingerprints, the results and the pipeline all read it.

It sits at the bottom of the package (under the layout, which the data readers use), so it
cannot import the stages: `Stage.run` imports its stage's module by name when the pipeline
runs it, which is also when torch and Ray are first needed. `tests/test_registry.py` checks
that every record's module exists and that its `run` takes the record's sections.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from dtl_ray.contract.results import (
    DiscriminateResult,
    EvaluateResult,
    FinetuneResult,
    PretrainResult,
    ScoreResult,
    SelectResult,
)
from dtl_ray.errors import ConfigError

__all__ = ["Stage", "STAGES", "NAMES", "stage", "check_names"]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str
    """Its module (`dtl_ray.stages.<name>`), folder (`<run>/<name>/`), `--stages` name and
    `report.json` key."""
    sections: tuple[str, ...]
    """The config sections its `run(layout, ...)` takes, by name (`seed`: the run's seed)."""
    fingerprint: tuple[str, ...]
    """Config keys (a section or a dotted key) its outputs depend on, besides every earlier
    stage's: a re-run with other values is refused (`pipeline.fingerprints`). Scaling keys are
    never among them: they change how a stage runs, not what it means."""
    result: type
    """What its `run` returns (`contract.results`): stored in its done-marker, shown in
    `report.json` under its name."""
    train_runs: tuple[str, ...] = ()
    """Its Ray Train runs, each in `<run>/<name>/<train run>/` under that fixed name, so that
    running the stage again resumes it."""

    def run(self, cfg: Any, layout: Any) -> Any:
        """Runs the stage on the sections of `cfg` (a `PipelineConfig`) it takes."""
        module = importlib.import_module(f"dtl_ray.stages.{self.name}")
        return module.run(layout, **{s: getattr(cfg, s) for s in self.sections})

    def read(self, summary: dict) -> Any:
        """Its result from the summary kept in its done-marker."""
        return self.result(**summary)


STAGES: tuple[Stage, ...] = (
    Stage("pretrain", sections=("model", "data", "pretrain", "scaling", "seed"),
          fingerprint=("seed", "source.uri", "target.uri", "model", "data.extensions",
                       "data.batch_size", "data.shuffle_buffer", "pretrain"),
          result=PretrainResult, train_runs=("train",)),
    # train: D on the pretrained features; dann: the adaptation; adapted: D on its features
    Stage("discriminate",
          sections=("discriminate", "model", "data", "pretrain", "scaling", "seed"),
          fingerprint=("discriminate",), result=DiscriminateResult,
          train_runs=("train", "dann", "adapted")),
    Stage("score", sections=("score", "scaling", "model", "data", "discriminate"),
          fingerprint=("score",), result=ScoreResult),
    Stage("select", sections=("select",), fingerprint=("select",), result=SelectResult),
    Stage("finetune", sections=("finetune", "select", "model", "pretrain", "scaling", "data",
                                "score", "seed"),
          fingerprint=("finetune",), result=FinetuneResult),
    Stage("evaluate", sections=("scaling", "model", "data", "score"), fingerprint=(),
          result=EvaluateResult),
)

NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
"""The stages' names in pipeline order."""

_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    """The record of stage `name`.

    Raises:
        ValueError: no stage has that name.
    """
    if name not in _BY_NAME:
        raise ValueError(f"unknown stage {name!r}: choose from {list(NAMES)}")
    return _BY_NAME[name]


def check_names(names: list[str]) -> None:
    """Refuses names that are not stages (`--stages`, `--restart-from`).

    Raises:
        ConfigError: naming them and the stages there are.
    """
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}: choose from {NAMES}")
