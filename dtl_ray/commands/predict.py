"""`dtl-ray predict`: label images with a finished run's model (a Ray Data actor pool)."""

from __future__ import annotations

import argparse

from dtl_ray.commands import _common

HELP = ("label images with a finished run's model (Ray Data): path, class, confidence, "
        "p_target, error")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run's folder (local or s3://)")
    p.add_argument("images", help="a folder or s3:// prefix of images (any depth)")
    p.add_argument("--out", required=True,
                   help="output file (.csv, else Parquet; local or s3://)")
    _common.add_model(p)
    p.add_argument("--batch-size", type=int, default=64, help="images per scoring batch")
    p.add_argument("--gpu", action="store_true", help="score on GPUs")


def main(args: argparse.Namespace) -> int:
    from dtl_ray import storage
    from dtl_ray.inference import predict

    _common.at_least_one("--batch-size", args.batch_size)
    storage.check_access(args.images)
    counts = predict.predict(args.run_dir, args.images, args.out, args.model, args.batch_size,
                             args.gpu)
    print(f"labelled {counts['predicted']} of {counts['images']} images with model "
          f"'{args.model}' ({counts['rejected']} cannot be read: listed with their reason) "
          f"-> {args.out}")
    return 0
