"""`dtl-ray run`: run the pipeline (or some of its stages) from a config, or `--check` it."""

from __future__ import annotations

import argparse

from dtl_ray.commands import _common
from dtl_ray.contract import registry

HELP = "run the pipeline from a YAML config (resumes a run that stopped)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see docs/config.md)")
    _common.add_overrides(p)
    p.add_argument("--stages", default=None,
                   help="comma-separated stages to run, of: " + ", ".join(registry.NAMES)
                   + " (default: all)")
    p.add_argument("--check", action="store_true",
                   help="check the config, the URIs, the model and the data folders, then stop "
                   "(nothing is kept, Ray is not started)")
    p.add_argument("--restart-from", metavar="STAGE", default=None, choices=registry.NAMES,
                   help="delete this stage and every later one of the run first, so they are "
                   "made again (needed after changing settings a finished stage depends on); "
                   "one of: " + ", ".join(registry.NAMES))
    _common.add_verbose(p)


def main(args: argparse.Namespace) -> int:
    from dtl_ray import config

    cfg = config.load_config(args.config, args.overrides)
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    if stages is not None:
        registry.check_names(stages)

    from dtl_ray import pipeline

    if args.check:
        found = pipeline.check(cfg, stages, args.restart_from)
        splits = "; ".join(f"{d} " + " · ".join(f"{s} {n:,}" for s, n in found[d].items())
                           for d in ("source", "target"))
        print(f"dtl-ray: config, storage, model and data are usable: {splits}; "
              f"{found['unreadable_names']} file name(s) unreadable")
        return 0
    doc = pipeline.run(cfg, stages, restart_from=args.restart_from, verbose=args.verbose)
    print(doc.get("verdict", ""))
    return 0
