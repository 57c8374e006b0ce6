"""`dtl-ray scale`: the pipeline at growing sizes with a small object store."""

from __future__ import annotations

import argparse
import os

from dtl_ray.commands import _common

HELP = ("the pipeline at 1x and 10x the demo's size with a small object store: driver memory, "
        "spilling, stage times (scale.json)")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/scale", help="where the runs and scale.json go")
    p.add_argument("--factors", type=float, nargs="+", default=[1.0, 10.0],
                   help="sizes, as multiples of the demo pair's")
    p.add_argument("--store-mb", type=int, default=300, help="object store cap per run (MB)")
    _common.add_overrides(p)


def main(args: argparse.Namespace) -> int:
    from dtl_ray.tools import scale

    doc = scale.run(args.out, args.factors, args.store_mb, args.overrides)
    for key, ok in doc.get("met", {}).items():
        print(f"{key}: {doc[key]} (target {scale.TARGETS[key]}: {'met' if ok else 'NOT met'})")
    print(f"wrote {os.path.join(args.out, 'scale.json')}")
    return 0
