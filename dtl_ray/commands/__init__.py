"""The command line's commands, one module each, in the order `dtl-ray --help` lists them.

A command module owns everything about its command: `HELP` (its line in `dtl-ray --help`),
`arguments(parser)` (its arguments, each with help text; defaults are shown by the help
formatter) and `main(args) -> int` (the work and what it prints). Modules import only the
standard library at the top, so `dtl-ray --help` and a config error answer in well under a
second; torch, Ray and pandas are imported inside `main`. `dtl_ray.cli` builds the parser from
this table and turns user errors into one line and exit code 2.
"""

from __future__ import annotations

import importlib

__all__ = ["COMMANDS", "load"]

COMMANDS: dict[str, str] = {
    "demo": "demo",
    "demo-data": "demo_data",
    "run": "run",
    "submit": "submit",
    "predict": "predict",
    "export": "export",
    "serve": "serve",
    "suggest-labels": "suggest_labels",
    "report": "report",
    "pack": "pack",
    "bench": "bench",
    "bench-labels": "bench_labels",
    "perf": "perf",
    "scale": "scale",
}
"""Command name -> its module under `dtl_ray.commands`."""


def load(name: str):
    """The module of command `name`."""
    return importlib.import_module(f"dtl_ray.commands.{COMMANDS[name]}")
