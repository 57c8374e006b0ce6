"""`dtl-ray suggest-labels`: the unlabeled target images worth labeling next."""

from __future__ import annotations

import argparse

from dtl_ray.commands import _common

HELP = ("the unlabeled target images to label next (uncertain, unlike anything labeled, "
        "target-like; diverse): a CSV and a contact sheet")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run's folder (local or s3://)")
    p.add_argument("--budget", type=int, required=True, help="how many images to suggest")
    p.add_argument("--out", default=None,
                   help="CSV to write (default: RUN/suggested_labels.csv; the sheet beside it)")
    _common.add_model(p)


def main(args: argparse.Namespace) -> int:
    from dtl_ray import storage
    from dtl_ray.inference import suggest

    _common.at_least_one("--budget", args.budget)
    out = args.out or storage.join(args.run_dir.rstrip("/"), "suggested_labels.csv")
    r = suggest.suggest(args.run_dir, args.budget, out, args.model)
    print(f"suggested {r['suggested']} of {r['unlabeled']} unlabeled target images -> "
          f"{r['csv']} (contact sheet {r['sheet']})")
    return 0
