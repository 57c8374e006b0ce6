"""`dtl-ray bench`: the method and every baseline over seeds, with the spread."""

from __future__ import annotations

import argparse
import os

from dtl_ray.commands import _common

HELP = "the method and every baseline over seeds (bench.json, bench.html)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config (default: configs/demo.yaml)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--fractions", type=float, nargs="+", default=None,
                   help="source fractions of the search (default: the config's "
                   "finetune.source_fractions)")
    p.add_argument("--pair", choices=_common.PAIRS, default=None,
                   help="generate this demo pair per seed (default: standard for the demo "
                   "config, else the config's data)")
    p.add_argument("--out", default="runs/bench", help="where the runs and the report go")
    _common.add_overrides(p)


def main(args: argparse.Namespace) -> int:
    from dtl_ray.tools import bench

    _common.at_least_one("--seeds", args.seeds)
    path = args.config or _common.demo_config_path()
    pair = args.pair or ("standard" if os.path.basename(path) == _common.DEMO_CONFIG else None)
    doc = bench.run(path, args.seeds, args.out, pair, args.fractions, args.overrides)
    s = doc["summary"]
    for row, v in s["accuracy"].items():
        print(f"{row:>14}  {v['mean']:.3f} ± {v['sd']:.3f}")
    free = s["label_free"]
    if free["mean"] is not None:
        print(f"{'label-free':>14}  {free['mean']:.3f} ± {free['sd']:.3f}  (chosen on "
              f"target val: {s['chosen']['mean']:.3f})")
    print(f"wrote {os.path.join(args.out, 'bench.json')} and bench.html")
    return 0
