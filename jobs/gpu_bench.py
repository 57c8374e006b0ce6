"""GPU benchmark: the model-only ceiling against the scoring stage, and AMP training speed.

    python jobs/gpu_bench.py                  # on a machine with a GPU (under 5 minutes)
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/gpu_bench.py

Prints one JSON line per figure and writes them to `runs/perf/gpu.json`:

1. `forward_ceiling`: `--model` forward rate (images/s) on synthetic GPU tensors, eval mode,
   channels_last, bf16 autocast: what the GPU can do with no input pipeline at all;
2. `score_stage`: the real score stage (Ray Data read + decode on CPU tasks, `Scorer` actors on
   the GPU) on real decoded images at `--image-size`, and its ratio to the ceiling;
3. `train_amp`: training images/s for `--model` at `--image-size`, bf16 autocast,
   channels_last, through `loops.train_epoch` (the loop the stages use) from uint8 host
   batches, augmentation included.

`--device cpu` runs the same code on CPU with small settings (a smoke test, not a figure).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
import torch


def _rate(fn, images_per_call: int, seconds: float, sync) -> dict:
    """Calls `fn` for about `seconds` after two warm-up calls; images per second."""
    for _ in range(2):
        fn()
    sync()
    calls, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        fn()
        calls += 1
    sync()
    wall = time.time() - t0
    return {"images_per_second": round(calls * images_per_call / wall, 1), "calls": calls,
            "seconds": round(wall, 2)}


def forward_ceiling(model_name: str, size: int, batch: int, seconds: float, device: str) -> dict:
    from dtl_ray.method import loops, models

    model = loops.for_device(models.build_classifier(model_name, 10), device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    if loops.on_gpu(device):
        x = x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def step() -> None:
        with loops.autocast(device):
            model(x)

    sync = torch.cuda.synchronize if loops.on_gpu(device) else (lambda: None)
    return {"model": model_name, "image_size": size, "batch": batch,
            **_rate(step, batch, seconds, sync)}


def train_amp(model_name: str, size: int, batch: int, seconds: float, device: str) -> dict:
    from dtl_ray.method import loops, models

    model = loops.for_device(models.build_classifier(model_name, 10), device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    host = rng.integers(0, 255, size=(batch, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=batch)
    aug = loops.Augment(rotation=10, crop=0.1, flip=True, brightness=0.1, contrast=0.1)

    def step() -> None:
        loops.train_epoch(model, [(host, labels)], opt, aug, gen, device)

    sync = torch.cuda.synchronize if loops.on_gpu(device) else (lambda: None)
    return {"model": model_name, "image_size": size, "batch": batch, "amp": "bf16"
            if loops.on_gpu(device) else None, **_rate(step, batch, seconds, sync)}


def _jpeg_pool(out: str, size: int, count: int) -> str:
    """`count` real JPEG files at `size` px in a dtl-ray domain layout (upscaled demo shapes)."""
    from PIL import Image

    from dtl_ray.data.pairs import demo

    rng = np.random.default_rng(0)
    shared = demo.SHARED_CLASSES
    # most files in source/train and target/unlabeled; one per class in the other splits
    per_split = {("source", "train"): count // 2, ("target", "unlabeled"): count // 2,
                 ("source", "val"): len(shared), ("target", "train"): len(shared),
                 ("target", "val"): len(shared), ("target", "test"): len(shared)}
    for (domain, split), n in per_split.items():
        for i in range(n):
            name = shared[i % len(shared)]
            img = Image.fromarray(demo.render(name, "near", rng)).resize((size, size),
                                                                         Image.BILINEAR)
            d = os.path.join(out, domain, split, "all" if split == "unlabeled" else name)
            os.makedirs(d, exist_ok=True)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            with open(os.path.join(d, f"{name}-{i:05d}.jpg"), "wb") as f:
                f.write(buf.getvalue())
    return out


def score_stage(model_name: str, size: int, batch: int, images: int, files: int, out: str,
                use_gpu: bool) -> dict:
    import pandas as pd

    from dtl_ray import config
    from dtl_ray.data import manifests
    from dtl_ray.raykit import connect
    from dtl_ray.tools import perf

    pool = _jpeg_pool(os.path.join(out, "gpu-images"), size + size // 8, files)
    m = manifests.build(os.path.join(pool, "source"), os.path.join(pool, "target"),
                            [".jpg"])
    base = m.table
    reps = -(-images // len(base))
    rows = pd.concat([base.assign(sample_id=base["sample_id"] + f"#{r}") for r in range(reps)],
                     ignore_index=True).iloc[:images].reset_index(drop=True)
    run_uri = os.path.join(out, "gpu-score")
    perf._stage_run_dir(run_uri, rows, m.classes, model_name, size)
    cfg = config.load_config(None, [
        f"source.uri={pool}/source", f"target.uri={pool}/target", f"model.backbone={model_name}",
        f"model.image_size={size}", f"score.batch_size={batch}",
        f"scaling.use_gpu={'true' if use_gpu else 'false'}"])
    connect.ensure_ray()
    return {"model": model_name, "image_size": size, "batch": batch, "files": files,
            **perf.score_ray(cfg, run_uri, 0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=20.0, help="per timed figure")
    p.add_argument("--images", type=int, default=40000, help="rows scored by the score stage")
    p.add_argument("--files", type=int, default=4000, help="distinct JPEG files behind them")
    p.add_argument("--out", default="runs/perf")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU here (use --device cpu for a smoke test)", file=sys.stderr)
        return 2
    from dtl_ray.tools import perf

    os.makedirs(args.out, exist_ok=True)
    doc = {"machine": perf.machine(), "device": args.device}
    t0 = time.time()

    def emit(key: str, value: dict) -> None:
        doc[key] = value
        print(json.dumps({"figure": key, **value}), flush=True)
        with open(os.path.join(args.out, "gpu.json"), "w") as f:
            json.dump(doc, f, indent=2)

    ceiling = forward_ceiling(args.model, args.image_size, args.batch, args.seconds, args.device)
    emit("forward_ceiling", ceiling)
    emit("train_amp", train_amp(args.model, args.image_size, args.train_batch, args.seconds,
                                args.device))
    score = score_stage(args.model, args.image_size, args.batch, args.images, args.files,
                        args.out, args.device == "cuda")
    score["over_ceiling"] = round(score["images_per_second"] / ceiling["images_per_second"], 3)
    score["steady_over_ceiling"] = round(score["steady_images_per_second"]
                                         / ceiling["images_per_second"], 3)
    emit("score_stage", score)
    emit("total", {"seconds": round(time.time() - t0, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
