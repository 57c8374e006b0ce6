"""Fine-tuning recipes side by side on a finished run's data, in one process (a measurement for
development, not a test; no Ray).

Run: .venv/bin/python scripts/finetune_recipes.py RUN_DIR [--recipes a,b,...] [--epochs N]
         [--lr LR] [--seed S] [--set consistency.threshold=0.95 ...]

RUN_DIR: a run whose stages up to `select` are done (its pretrained model, its scores).
Each recipe fine-tunes the pretrained model with `target_fit.train` (the trials' code) on
the same epochs, batch and samples per epoch, keeps the best epoch on target val, and is
measured once on target test:

- `target_only`: the labeled target; `fixmatch`: the same + consistency on the pool;
- `all_source`: + every source train image of the target's classes; `adamatch`: the same +
  consistency;
- `soft<alpha>`: the source drawn in proportion to `w ** alpha` (the method's soft cell);
  `soft<alpha>+c`: the same + consistency;
- `top<fraction>` / `top<fraction>+c`: the top fraction per class by `w`;
- `match=<a>|<b>` / `...+c`: the source images whose sample_id holds `a` or `b` (a style).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import manifests
from dtl_ray.data.decode import decode_batch
from dtl_ray.data.samples import SAMPLE_ID
from dtl_ray.data.scorefiles import read_scores
from dtl_ray.method import batches, consistency, design, loops, target_fit, weighting
from dtl_ray.method.loops import Augment


def _decode(rows, size):
    b = decode_batch({c: rows[c].to_numpy() for c in rows.columns}, size)
    return b["image"][b["error"] == ""]


def _source(recipe: str, scores, classes, seed):
    base = recipe.removesuffix("+c")
    pool = weighting.select_source(scores, classes, "top_fraction", 1.0)
    if base in ("target_only", "fixmatch"):
        return pool.iloc[:0]
    if base in ("all_source", "adamatch"):
        return pool
    if base.startswith("soft"):
        return weighting.sample_source(pool, float(base[4:]), len(pool), seed)
    if base.startswith("match="):  # source rows whose sample_id holds one of the strings
        keys = base[len("match="):].split("|")
        return pool[pool["sample_id"].map(lambda s: any(k in s for k in keys))]
    if base.startswith("top"):
        return weighting.select_source(scores, classes, "top_fraction", float(base[3:]),
                                       balanced=True)
    raise SystemExit(f"unknown recipe {recipe}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--recipes", default="target_only,fixmatch,all_source,adamatch")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--ratio", type=int, default=1)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--no-align", action="store_true")
    ap.add_argument("--flip", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epoch-samples", type=int, default=0,
                    help="samples per epoch (default: the all-source cell's, as the search)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layout = RunLayout(args.run)
    manifest = manifests.load(layout)
    scores = read_scores(layout)
    classes = manifest.target_classes
    local = {c: i for i, c in enumerate(classes)}
    rows = manifest.table.set_index(SAMPLE_ID)
    lab = manifest.rows("target", "train")
    unl = _decode(manifest.rows("target", "unlabeled"), args.size)
    val, test = manifest.rows("target", "val"), manifest.rows("target", "test")
    vx, vy = _decode(val, args.size), np.array([local[c] for c in val["label"]])
    tx, ty = _decode(test, args.size), np.array([local[c] for c in test["label"]])
    aug = Augment(rotation=10, crop=0.1, flip=args.flip, brightness=0.2, contrast=0.2)
    cons = consistency.Consistency(weight=args.weight, threshold=args.threshold,
                                   unlabeled_ratio=args.ratio, align=not args.no_align)
    pool = weighting.select_source(scores, classes, "top_fraction", 1.0)
    out = {}
    for recipe in args.recipes.split(","):
        t0 = time.time()
        src = _source(recipe, scores, classes, args.seed)
        members = design.members_table(lab, src, scores.iloc[:0].assign(pred=[]), local,
                                       False)
        images = _decode(rows.loc[members[SAMPLE_ID]].reset_index(), args.size)
        ts = design.as_train_set(members)
        n_lab = int(members["labeled"].sum())
        longest = args.epoch_samples or (
            len(pool) + n_lab * batches.mixed_repeats(n_lab, len(pool), 0.25))
        uses = recipe in ("fixmatch", "adamatch") or recipe.endswith("+c")
        settings = target_fit.Settings(lr=args.lr, epochs=args.epochs, batch_size=64,
                                       mix_ratio=0.25, epoch_samples=longest,
                                       seed=args.seed, consistency=cons if uses else None)
        model = target_fit.target_model(layout.pretrain_model, len(classes), args.seed)
        history = []
        best = None
        for metrics, state in target_fit.train(
                model, batches.memory_batches(images, ts, settings), vx, vy, settings, aug,
                unlabeled=batches.memory_unlabeled(unl, settings) if uses else None):
            history.append(round(metrics["val_accuracy"], 3))
            best = state["best"]
        model.load_state_dict(best["model"])
        acc = loops.evaluate(loops.predict(model, tx), ty)["accuracy"]
        out[recipe] = {"test": round(acc, 4), "val": round(best["val_accuracy"], 4),
                       "curve": history, "seconds": round(time.time() - t0, 1),
                       "mask_rate": round(metrics.get("mask_rate", float("nan")), 3)}
        print(recipe, json.dumps(out[recipe]), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
