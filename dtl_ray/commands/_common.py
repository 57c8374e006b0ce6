"""What several commands share: the `--set` and `--verbose` arguments, the demo config, the
demo pairs' names, and the checks of numeric arguments."""

from __future__ import annotations

import argparse
import os
from importlib import resources

from dtl_ray.errors import ConfigError

__all__ = ["DEMO_CONFIG", "PAIRS", "add_overrides", "add_verbose", "add_model",
           "demo_config_path", "at_least_one"]

DEMO_CONFIG = "demo.yaml"
PAIRS = ("standard", "partial", "digits", "icons", "photos")
"""The built-in demo pairs (`data.pairs`): standard; partial (the target has 3 of the
source's 7 classes); digits (real images: printed digits to handwritten MNIST digits)."""


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted, e.g. finetune.epochs=3); repeatable")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", default=None,
                   help="print Ray's output here (default: in the run's log file, "
                   "<run>/logs/; also DTL_RAY_VERBOSE=1)")


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="chosen",
                   help="which of the run's models: chosen, method, label_free, a baseline "
                   "(target_only, all_source, random_subset, self_training, fixmatch, "
                   "adamatch) or cell-<i>")


def demo_config_path() -> str:
    """configs/demo.yaml of the checkout, else the copy shipped in the package."""
    here = os.path.join(os.getcwd(), "configs", DEMO_CONFIG)
    if os.path.exists(here):
        return here
    return str(resources.files("dtl_ray").joinpath(DEMO_CONFIG))


def at_least_one(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value
