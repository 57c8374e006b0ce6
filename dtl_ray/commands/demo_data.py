"""`dtl-ray demo-data`: write one of the built-in demo pairs."""

from __future__ import annotations

import argparse

from dtl_ray.commands import _common

HELP = "write a built-in demo domain pair (image folders)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder or s3:// URI")
    p.add_argument("--seed", type=int, default=0, help="the images' random seed")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the image counts")
    p.add_argument("--pair", choices=_common.PAIRS, default="standard",
                   help="partial: the target has 3 of the source's 7 classes; digits: real "
                   "images, printed digits (fonts) to handwritten MNIST digits; icons: real "
                   "images, desktop icons in five styles to a sixth (Debian's icon themes); "
                   "photos: photo-like scenes at 320x240, daylight to dusk, for "
                   "configs/photos.yaml's checks")


def main(args: argparse.Namespace) -> int:
    from dtl_ray import storage
    from dtl_ray.data.pairs import demo

    storage.check_access(args.out, write=True)
    counts = demo.write_demo(args.out, seed=args.seed, scale=args.scale, pair=args.pair)
    print(f"wrote the demo pair to {args.out}: {counts}")
    return 0
