"""Stage 3: score every source and target sample with a Ray Data actor-pool map.

Writes `<run>/score/scores/` (Parquet: sample_id, domain, split, path, label, p_target, weight,
pred, confidence, entropy) and `<run>/rejected.parquet` (unreadable files with the reason).
rows_in == rows_out + rows_rejected always holds.
"""

from __future__ import annotations

import time

from dtl_ray import data, scoring, storage
from dtl_ray.config import PipelineConfig

__all__ = ["run", "SCORE_COLUMNS"]

STAGE = "score"
SCORE_COLUMNS = ["sample_id", "domain", "split", "path", "label", "p_target", "weight", "pred",
                 "confidence", "entropy"]


def run(cfg: PipelineConfig, run_uri: str) -> dict:
    """Scores all samples; returns row counts, capped weights and timing."""
    from ray.data import SaveMode
    from ray.data.expressions import col

    t0 = time.time()
    manifest = data.load_manifest(run_uri)
    scored = scoring.score_dataset(cfg, manifest.table,
                                   storage.join(run_uri, "pretrain", "model.pt"),
                                   manifest.target_classes,
                                   storage.join(run_uri, "discriminate", "discriminator.pt"))
    scored = scored.materialize()  # scalar columns only: small, and read twice below
    rejected_cols = ["sample_id", "domain", "split", "path", "error"]
    rejected = scored.filter(expr=col("error") != "").select_columns(rejected_cols).to_pandas()
    rejected = rejected.reindex(columns=rejected_cols)  # an empty result has no columns
    good = scored.filter(expr=col("error") == "")
    fs, path = storage.resolve(storage.join(run_uri, STAGE, "scores"))
    good.select_columns(SCORE_COLUMNS).write_parquet(path, filesystem=fs, mode=SaveMode.OVERWRITE)
    data.write_parquet_df(rejected, storage.join(run_uri, "rejected.parquet"))
    scores = data.read_parquet_df(storage.join(run_uri, STAGE, "scores"),
                                  columns=["domain", "split", "weight"])
    capped = int(good.sum("capped") or 0) if len(scores) else 0
    by_split = scores.groupby(["domain", "split"])["weight"].mean()
    return {
        "rows_in": int(len(manifest.table)),
        "rows_out": int(len(scores)),
        "rows_rejected": int(len(rejected)),
        "rejected_examples": rejected.head(5)[["path", "error"]].to_dict("records"),
        "weights_capped": capped,
        "mean_weight": {f"{d}/{s}": float(v) for (d, s), v in by_split.items()},
        "seconds": round(time.time() - t0, 2),
    }
