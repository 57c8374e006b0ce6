"""`dtl-ray bench-labels`: labeling the suggested images against as many random ones."""

from __future__ import annotations

import argparse
import os

from dtl_ray.commands import _common

HELP = ("labeling the suggested images against as many random ones, by simulation on a demo "
        "pair over seeds (bench_labels.json, bench_labels.html)")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config (default: configs/demo.yaml)")
    p.add_argument("--pair", choices=_common.PAIRS, default=None,
                   help="the demo pair whose unlabeled classes are known (default: digits "
                   "for configs/digits.yaml, else standard)")
    p.add_argument("--budget", type=int, default=50, help="images to label in each pick")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--out", default="runs/bench-labels", help="where the runs and report go")
    _common.add_overrides(p)


def main(args: argparse.Namespace) -> int:
    from dtl_ray.tools import bench_labels

    _common.at_least_one("--budget", args.budget)
    _common.at_least_one("--seeds", args.seeds)
    path = args.config or _common.demo_config_path()
    pair = args.pair or ("digits" if os.path.basename(path) == "digits.yaml" else "standard")
    doc = bench_labels.run(path, args.seeds, args.out, pair, args.budget, args.overrides)
    s = doc["summary"]
    print(f"target test accuracy over {args.seeds} seeds, {args.budget} more labels "
          f"(mean ± sd):")
    for row in bench_labels.ROWS:
        cells = "  ".join(f"{k} {s['accuracy'][k][row]['mean']:.3f} ± "
                          f"{s['accuracy'][k][row]['sd']:.3f}"
                          for k in ("base", *bench_labels.PICKS))
        d = s["suggested_minus_random"][row]
        print(f"{row:>12}  {cells}  suggested - random {d['mean']:+.3f} ± {d['sd']:.3f} "
              f"(won {d['wins']} of {d['n']})")
    print(f"wrote {os.path.join(args.out, 'bench_labels.json')} and bench_labels.html")
    return 0
