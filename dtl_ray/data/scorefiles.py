"""The score stage's files: their columns, and the Ray Data task that writes them.

Kept apart from the stage (which imports the models and torch): the writing tasks import only
this module, pandas and pyarrow, so a fresh worker process starts them in a fraction of a
second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dtl_ray import storage
from dtl_ray.storage import parquet

__all__ = ["SCORE_COLUMNS", "REJECTED_COLUMNS", "SCHEMA", "ROWS_PER_FILE", "WRITERS",
           "write_block", "Writer", "read_scores"]

SCORE_COLUMNS = ["sample_id", "domain", "split", "path", "label", "p_target", "logit_target",
                 "weight", "pred", "confidence", "entropy"]
REJECTED_COLUMNS = ["sample_id", "domain", "split", "path", "error"]


SCHEMA = [("sample_id", "string"), ("domain", "string"), ("split", "string"),
          ("path", "string"), ("label", "int64"), ("p_target", "float64"),
          ("logit_target", "float64"), ("weight", "float64"), ("pred", "int64"),
          ("confidence", "float64"), ("entropy", "float64")]
WRITERS = 4  # at most: a file of 50,000 rows takes well under a second to write
ROWS_PER_FILE = 50_000  # rows a writing task gathers into one file (about 8 MB), written atomically



def write_block(batch: pd.DataFrame, out_uri: str, clip: float) -> pd.DataFrame:
    """A bundle of scored rows, in a Ray Data task: the decoded rows go to their own Parquet
    file (named by a hash of their ids, so a retried task writes the same file again); what
    comes back to the driver is one row of figures and the rejected rows (few), never the
    scores themselves."""
    import hashlib
    import json

    import pyarrow as pa

    bad = batch["error"] != ""
    good = batch.loc[~bad]
    name = ""
    if len(good):
        name = "part-" + hashlib.sha1("\n".join(good["sample_id"]).encode()).hexdigest()[:20] \
            + ".parquet"
        parquet.write_table(pa.Table.from_pandas(good[SCORE_COLUMNS], schema=pa.schema(SCHEMA),
                                          preserve_index=False), storage.join(out_uri, name))
    st = good[(good["domain"] == "source") & (good["split"] == "train")]
    groups = {f"{d}/{s}": [float(g.sum()), len(g)]
              for (d, s), g in good.groupby(["domain", "split"])["weight"]}
    return pd.DataFrame([{
        "part": name, "rows": len(good), "capped": int(good["capped"].sum()),
        "src_n": len(st), "src_floor": int((st["p_target"] <= clip).sum()),
        "src_w": float(st["weight"].sum()), "src_w2": float((st["weight"] ** 2).sum()),
        "groups": json.dumps(groups),
        "rejected": json.dumps(batch.loc[bad, REJECTED_COLUMNS].to_dict("records"))}])


class Writer:
    """`write_block` in a Ray Data actor (asks for no CPU): started once, beside the scoring
    actors, instead of a fresh worker process per writing task (measured on 2 cores: a
    400-image score stage took about 6 s longer with tasks)."""

    def __init__(self, out_uri: str, clip: float):
        self.out_uri, self.clip = out_uri, clip

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return write_block(batch, self.out_uri, self.clip)


def read_scores(layout, columns: list[str] | None = None) -> pd.DataFrame:
    """The scores table of a run (`RunLayout`), IWAN weights normalised: the files are written
    once, as rows are scored; IWAN's divisor (the mean weight over source train) is known only
    at the end and kept in the score stage's summary instead of rewriting the files."""
    scores = parquet.read_df(layout.scores, columns)
    if "weight" in scores and layout.is_done("score"):
        divisor = float(layout.summary("score").get("weight_divisor", 1.0))
        if divisor != 1.0:
            scores["weight"] = scores["weight"].to_numpy(np.float64) / divisor
    return scores
