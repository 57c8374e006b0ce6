"""`dtl-ray pack`: an image-folder domain as Parquet shards (a Ray Data job)."""

from __future__ import annotations

import argparse

HELP = "pack an image-folder domain into Parquet shards (fewer, larger objects to read)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="image-folder domain (local or s3://)")
    p.add_argument("dst", help="where the shards and _packed.json go (local or s3://)")
    p.add_argument("--rows-per-shard", type=int, default=10000, help="images per shard")
    p.add_argument("--domain", choices=["source", "target"], default=None,
                   help="the domain's splits (default: target when it has unlabeled/ or "
                   "test/, else source)")
    p.add_argument("--seed", type=int, default=0,
                   help="rows are shuffled across shards with this seed")
    p.add_argument("--keep-order", action="store_true",
                   help="keep the listing's order (class by class) instead of shuffling")


def main(args: argparse.Namespace) -> int:
    import os

    from dtl_ray import storage
    from dtl_ray.commands._common import at_least_one
    from dtl_ray.data import packing, readers
    from dtl_ray.raykit import connect

    at_least_one("--rows-per-shard", args.rows_per_shard)
    storage.check_access(args.src)
    storage.check_access(args.dst, write=True)
    # a Ray Data job: on RAY_ADDRESS's cluster, else a local Ray; the S3 endpoint and region
    # (never secrets) go to its workers
    connect.ensure_ray({k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_REGION")
                        if k in os.environ})
    readers.configure_context()
    m = packing.pack(args.src, args.dst, args.rows_per_shard, args.domain,
                     seed=None if args.keep_order else args.seed)
    print(f"packed {m['rows']} images ({m['domain']}: {m['splits']}) into "
          f"{len(m['shards'])} shards at {args.dst}")
    return 0
