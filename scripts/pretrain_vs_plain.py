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

import numpy as np
import torch

from dtl_ray import builders, config, data, loops, pipeline, storage


def plain_loop(cfg, rows, val, num_classes: int, order: str) -> dict:
    """Best source-val accuracy of a plain loop; order 'shuffled' or 'sorted' (manifest)."""
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    x = data.decode_batch({"path": rows["path"].to_numpy()}, cfg.model.image_size)["image"]
    y = rows["label"].to_numpy()
    vx = data.decode_batch({"path": val["path"].to_numpy()}, cfg.model.image_size)["image"]
    vy = val["label"].to_numpy()
    torch.manual_seed(cfg.seed)
    model = builders.classifier(cfg.model, num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain.lr,
                            weight_decay=cfg.pretrain.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug = builders.augment(cfg.pretrain)
    bs, rng, curve = cfg.data.batch_size, np.random.default_rng(cfg.seed), []
    for _ in range(cfg.pretrain.epochs):
        idx = rng.permutation(len(x)) if order == "shuffled" else np.arange(len(x))
        batches = ((x[idx[i:i + bs]], y[idx[i:i + bs]]) for i in range(0, len(x), bs))
        loops.train_epoch(model, batches, opt, aug, gen)
        curve.append(loops.evaluate(loops.predict(model, vx, 4 * bs), vy)["accuracy"])
    return {"best_val_accuracy": max(curve), "curve": [round(c, 4) for c in curve]}


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
    cfg = pipeline.absolute(cfg)
    t0 = time.time()
    doc = pipeline.run(cfg, ["pretrain"])
    ray_s = time.time() - t0
    manifest = data.load_manifest(pipeline.run_layout(cfg))
    rows, val = manifest.rows("source", "train"), manifest.rows("source", "val")
    result = {"images": len(rows), "epochs": cfg.pretrain.epochs,
              "pipeline": {"best_val_accuracy": doc["pretrain"]["source_val_accuracy"],
                           "curve": [round(c["val_accuracy"], 4)
                                     for c in doc["pretrain"]["curve"]],
                           "seconds": round(ray_s, 1)}}
    for order in ["shuffled"] + (["sorted"] if args.sorted else []):
        t0 = time.time()
        r = plain_loop(cfg, rows, val, len(manifest.classes), order)
        result["plain" if order == "shuffled" else "plain_sorted"] = {
            **r, "seconds": round(time.time() - t0, 1)}
    result["pipeline_over_plain"] = round(result["pipeline"]["best_val_accuracy"]
                                          / result["plain"]["best_val_accuracy"], 3)
    print(json.dumps(result, indent=1))
    storage.write_json(os.path.join(out, "pretrain_vs_plain.json"), result)


if __name__ == "__main__":
    main()
