"""`dtl-ray demo`: write the demo pair (once per seed) and run the pipeline on it."""

from __future__ import annotations

import argparse

from dtl_ray.commands import _common

HELP = "write the demo pair, then run the whole pipeline on it with configs/demo.yaml"


def arguments(p: argparse.ArgumentParser) -> None:
    _common.add_overrides(p)
    _common.add_verbose(p)
    p.add_argument("--data", default="runs/demo-data", help="where the demo pair is written")


def main(args: argparse.Namespace) -> int:
    from dtl_ray import config, pipeline, storage
    from dtl_ray.data.pairs import demo

    path = _common.demo_config_path()
    cfg = config.load_config(path, args.overrides)
    marker = storage.join(args.data, f"_SEED_{cfg.seed}")
    if not storage.exists(marker):
        print(f"writing the demo pair (seed {cfg.seed}) to {args.data}", flush=True)
        storage.write_json(marker, demo.write_demo(args.data, seed=cfg.seed))
    cfg = config.load_config(path, [f"source.uri={storage.join(args.data, 'source')}",
                                    f"target.uri={storage.join(args.data, 'target')}",
                                    *args.overrides])
    print(pipeline.run(cfg, verbose=args.verbose).get("verdict", ""))
    return 0
