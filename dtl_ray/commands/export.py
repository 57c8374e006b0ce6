"""`dtl-ray export`: a run's model as TorchScript that loads without dtl-ray."""

from __future__ import annotations

import argparse

from dtl_ray.commands import _common

HELP = ("write a run's model as TorchScript that loads without dtl-ray (class names and "
        "preprocessing inside)")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run's folder (local or s3://)")
    p.add_argument("--out", required=True, help="output .pt file (local or s3://)")
    _common.add_model(p)


def main(args: argparse.Namespace) -> int:
    from dtl_ray.inference import predict

    info = predict.export(args.run_dir, args.out, args.model)
    print(f"exported model '{args.model}' ({info['backbone']}, {len(info['classes'])} "
          f"classes, input {info['input']}) -> {args.out}")
    return 0
