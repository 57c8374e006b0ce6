"""Checks the acceptance criteria of the demo over several seeds (not a timed test).

Run: .venv/bin/python scripts/check_seeds.py --seeds 0 1 2      (or: make seeds)

For each seed it writes the demo pair with that seed, runs the whole pipeline with
configs/demo.yaml (name demo-seed<N>), and checks: score.rows_in == rows_out + rows_rejected,
no rows rejected, discriminator held-out AUC >= 0.8, and the method's target test accuracy above
random_subset and target_only. Prints a table, mean and standard deviation; exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from dtl_ray import config, demo, pipeline, storage

ROWS = ["method", "source_only", "target_only", "all_source", "random_subset", "self_training"]


def one_seed(seed: int, storage_root: str, extra: list[str]) -> dict:
    data_dir = os.path.join(storage_root, f"demo-data-seed{seed}")
    if not storage.exists(os.path.join(data_dir, "_SEED")):
        demo.write_demo(data_dir, seed=seed)
        storage.write_json(os.path.join(data_dir, "_SEED"), seed)
    cfg = config.load_config("configs/demo.yaml", [
        f"seed={seed}", f"name=demo-seed{seed}", f"storage={storage_root}",
        f"source.uri={data_dir}/source", f"target.uri={data_dir}/target", *extra])
    doc = pipeline.run(cfg)
    ev, sc = doc["evaluate"], doc["score"]
    acc = {"method": ev["method"]["target_test_accuracy"],
           **{k: v["target_test_accuracy"] for k, v in ev["baselines"].items()}}
    checks = {
        "rows_in == rows_out + rows_rejected":
            sc["rows_in"] == sc["rows_out"] + sc["rows_rejected"],
        "no rows rejected": sc["rows_rejected"] == 0,
        "heldout_auc >= 0.8": doc["discriminator"]["heldout_auc"] >= 0.8,
        "method > random_subset": acc["method"] > acc["random_subset"],
        "method > target_only": acc["method"] > acc["target_only"],
    }
    return {"seed": seed, "accuracy": acc, "auc": doc["discriminator"]["heldout_auc"],
            "chosen": ev["chosen"]["arm"], "seconds": doc["seconds_total"], "checks": checks}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--storage", default="runs/seeds")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    results = [one_seed(s, os.path.abspath(args.storage), args.overrides) for s in args.seeds]
    print("\nseed  " + "  ".join(f"{r:>13}" for r in ROWS) + "    AUC  chosen")
    for r in results:
        print(f"{r['seed']:>4}  " + "  ".join(f"{r['accuracy'][k]:13.3f}" for k in ROWS)
              + f"  {r['auc']:.3f}  {r['chosen']}")
    if len(results) > 1:
        for name, fn in (("mean", statistics.mean), ("std", statistics.stdev)):
            print(f"{name:>4}  " + "  ".join(
                f"{fn([r['accuracy'][k] for r in results]):13.3f}" for k in ROWS)
                + f"  {fn([r['auc'] for r in results]):.3f}")
    failed = [(r["seed"], c) for r in results for c, ok in r["checks"].items() if not ok]
    for seed, c in failed:
        print(f"FAIL seed {seed}: {c}")
    print("all checks passed" if not failed else f"{len(failed)} check(s) failed")
    out = os.path.join(args.storage, "seeds.json")
    storage.write_json(os.path.abspath(out), results)
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
