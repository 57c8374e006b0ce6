"""`dtl-ray perf`: performance figures, the Ray path against plain PyTorch."""

from __future__ import annotations

import argparse
import os

from dtl_ray.commands import _common

HELP = "performance figures: Ray path against plain PyTorch (writes runs/perf/perf.json)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config (default: configs/demo.yaml)")
    _common.add_overrides(p)
    p.add_argument("--out", default="runs/perf", help="where perf.json goes")
    p.add_argument("--data", default=None,
                   help="a demo pair to read (default: written to OUT/demo-data)")
    p.add_argument("--n", type=int, default=3000,
                   help="images of the memory figure's 1x run (10x for scoring throughput)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each scoring variant")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each training variant")
    p.add_argument("--only", default=None,
                   help="comma-separated figures: score, memory, train, demo (default: all)")


def main(args: argparse.Namespace) -> int:
    from dtl_ray import config
    from dtl_ray.tools import perf

    cfg = config.load_config(args.config or _common.demo_config_path(), args.overrides)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    perf.run(cfg, out=args.out, data_uri=args.data, n=args.n, repeats=args.repeats,
             epochs=args.epochs, only=only)
    print(f"wrote {os.path.join(args.out, 'perf.json')}")
    return 0
