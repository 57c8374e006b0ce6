"""The photo recipe's short run, end to end on this machine's CPUs (a documented check, not a
test: resnet50 at 224 px takes minutes here). README "Your own data" quotes its figures.

Run: .venv/bin/python scripts/photos_check.py [--out runs/photos-check] [--scale 1.0]
         [--set key=value ...]

1. writes the photo-like pair (`dtl-ray demo-data --pair photos`: 424 JPEGs at 320x240);
2. puts a resnet50 state_dict where the run keeps its `IMAGENET1K_V2` download
   (`RUN/weights/`): a random init, since this machine cannot download; the run then takes
   the weights-name path (the weights' transforms, their normalisation) without the network;
3. runs `dtl-ray run configs/photos.yaml` with only the data paths, storage and
   `scaling.use_gpu=false` changed and the epochs and search cut (CUTS below), on a local Ray
   that the run starts, sampling the memory of that run's process tree (driver, Ray's
   daemons, workers) every half second;
4. prints each stage's seconds, what it read, the seconds per 10,000 images it implies, and
   the peak memory; writes them to OUT/photos_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUTS = ["scaling.use_gpu=false", "scaling.num_workers=1", "scaling.cpus_per_worker=1",
        "pretrain.epochs=2",
        "discriminate.epochs=5", "discriminate.folds=2", "discriminate.clusters=2",
        "finetune.epochs=1", "finetune.grace_period=1", "finetune.source_fractions=[0.25]",
        "finetune.target_fractions=[0.3]", "finetune.weight_alphas=[1.0]",
        "finetune.lr=[0.0003]", "finetune.train_layers=[all]", "finetune.min_epoch_samples=0",
        "finetune.source_val_samples=200", "data.batch_size=32", "finetune.batch_size=16"]
"""Two pretraining epochs (the second one's time is the steady rate), one fine-tuning epoch,
one setting per cell: every stage and arm runs, in minutes. Batches of 32, and 16 in the
trials: a resnet50 trial at 224 px with the consistency term (a labeled, a weak and a strong
batch per step) held 8.7-10.5 GB at 32 on a CPU, and two run at once on 24 GB."""


def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every process below it (Linux /proc: the run's driver,
    the Ray daemons it started and their workers)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue  # gone, or a kernel thread without VmRSS
    return total


def _peak_rss(pid: int, stop: threading.Event, out: dict) -> None:
    while not stop.is_set():
        out["peak"] = max(out.get("peak", 0), _tree_rss(pid))
        time.sleep(0.5)


def _accuracies(ev: dict) -> dict:
    """Target test accuracy per arm (a random init's: the check is of time, not quality)."""
    out = {k: v["target_test_accuracy"] for k, v in (ev.get("baselines") or {}).items()}
    if ev.get("method"):
        out["method"] = ev["method"]["target_test_accuracy"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "photos-check"))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the image counts")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()

    import torch
    import torchvision

    from dtl_ray.data.pairs import photos

    data = os.path.join(args.out, "data")
    if not os.path.isdir(os.path.join(data, "source")):
        photos.write_photos(data, seed=0, scale=args.scale)
    runs = os.path.join(args.out, "runs")
    weights = os.path.join(runs, "photos", "weights", "IMAGENET1K_V2.pth")
    if not os.path.exists(weights):
        os.makedirs(os.path.dirname(weights), exist_ok=True)
        torch.save(torchvision.models.resnet50().state_dict(), weights)
    sets = [f"source.uri={data}/source", f"target.uri={data}/target", f"storage={runs}",
            *CUTS, *args.sets]
    cmd = [os.path.join(os.path.dirname(sys.executable), "dtl-ray"), "run",
           os.path.join(ROOT, "configs", "photos.yaml")]
    for s in sets:
        cmd += ["--set", s]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env)
    stop, mem = threading.Event(), {}
    sampler = threading.Thread(target=_peak_rss, args=(proc.pid, stop, mem), daemon=True)
    sampler.start()
    rc = proc.wait()
    stop.set()
    wall = time.time() - t0
    if rc != 0:
        print(f"photos check: the run failed (exit {rc})", file=sys.stderr)
        return rc
    with open(os.path.join(runs, "photos", "report.json")) as f:
        report = json.load(f)
    n = report["data"]  # images per domain and split
    src = n["source"]["train"]
    every = sum(n["source"].values()) + sum(n["target"].values())
    rows = []
    for stage in ("pretrain", "discriminate", "score", "select", "finetune", "evaluate"):
        rows.append({"stage": stage, "seconds": round(float(report.get(stage, {}).get(
            "seconds", 0.0)), 1), "images": None, "seconds_per_10k": None})
    # steady rates, start-up left out: pretraining's last epoch (source train, then its val
    # pass), scoring after its first batch (every image, forward only; with its start-up when
    # the images fit in that batch)
    last = report["pretrain"]["curve"][-1]["seconds"]
    rows[0].update(images=src, seconds_per_10k=round(last * 10_000 / src))
    sc = report["score"]
    steady = sc["seconds"] - sc.get("startup_seconds", 0.0)
    done = sc["rows_in"] - sc.get("startup_rows", 0)
    if done <= 0:  # every image fit in the start-up batch: the whole stage (an upper bound)
        steady, done = sc["seconds"], sc["rows_in"]
    rows[2].update(images=every, seconds_per_10k=round(steady * 10_000 / done))
    result = {"wall_seconds": round(wall, 1), "peak_rss_gb": round(mem.get("peak", 0) / 2**30, 2),
              "cpus": os.cpu_count(), "torch": torch.__version__, "stages": rows,
              "test_accuracy": _accuracies(report.get("evaluate", {})), "overrides": sets}
    with open(os.path.join(args.out, "photos_check.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nphotos check: {wall:.0f} s wall, peak memory {result['peak_rss_gb']} GB "
          f"(the run's process tree), {os.cpu_count()} CPUs")
    for r in rows:
        per = (f"{r['seconds_per_10k']:>7} s per 10k images (steady)"
               if r["seconds_per_10k"] else "")
        print(f"  {r['stage']:<13}{r['seconds']:>8.1f} s  {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
