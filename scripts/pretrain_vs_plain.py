"""Pretraining under dtl-ray against a plain shuffled PyTorch loop (a measurement, not a test).

Run: .venv/bin/python scripts/pretrain_vs_plain.py configs/digits.yaml \
         --data runs/digits-data [--sorted] [--set KEY=VALUE ...]

Both train the same model from the same seed on the same source train images, with the same
epochs, batch size, optimiser and augmentation, and keep the best source-val accuracy:

- `pipeline`: dtl-ray's pretrain stage (Ray Data + TorchTrainer, the order it feeds);
- `plain`: decoded arrays, a fresh random permutation every epoch;
- `sorted` (with --sorted): the plain loop fed in the manifest's class-sorted order, which is
  what the pretrain stage saw before rows were shuffled.

Prints the three accuracies and `pipeline / plain` (the acceptance asks for at least 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from dtl_ray import config, pipeline, storage
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import manifests
from dtl_ray.pipeline import preflight
from dtl_ray.tools import perf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--data", required=True, help="a pair written by dtl-ray demo-data")
    ap.add_argument("--sorted", action="store_true", help="also the class-sorted plain loop")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="pretrain-vs-plain-")
    cfg = config.load_config(args.config, [
        f"source.uri={os.path.abspath(args.data)}/source",
        f"target.uri={os.path.abspath(args.data)}/target", f"storage={out}", "name=cmp",
        *args.overrides])
    cfg = preflight.absolute(cfg)
    t0 = time.time()
    doc = pipeline.run(cfg, ["pretrain"])
    ray_s = time.time() - t0
    manifest = manifests.load(RunLayout.of(cfg.storage, cfg.name))
    rows, val = manifest.rows("source", "train"), manifest.rows("source", "val")
    result = {"images": len(rows), "epochs": cfg.pretrain.epochs,
              "pipeline": {"best_val_accuracy": doc["pretrain"]["source_val_accuracy"],
                           "curve": [round(c["val_accuracy"], 4)
                                     for c in doc["pretrain"]["curve"]],
                           "seconds": round(ray_s, 1)}}
    for order in ["shuffled"] + (["sorted"] if args.sorted else []):
        t0 = time.time()
        r = perf.train_plain(cfg, rows, val, len(manifest.classes), cfg.pretrain.epochs,
                             shuffle=order == "shuffled")
        result["plain" if order == "shuffled" else "plain_sorted"] = {
            "best_val_accuracy": max(r["val_accuracy"]), "curve": r["val_accuracy"],
            "seconds": round(time.time() - t0, 1)}
    result["pipeline_over_plain"] = round(result["pipeline"]["best_val_accuracy"]
                                          / result["plain"]["best_val_accuracy"], 3)
    print(json.dumps(result, indent=1))
    storage.write_json(os.path.join(out, "pretrain_vs_plain.json"), result)


if __name__ == "__main__":
    main()
