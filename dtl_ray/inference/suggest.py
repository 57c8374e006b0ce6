"""`dtl-ray suggest-labels`: which unlabeled target images a person should label next.

Three views of each unlabeled target image, each turned into a percentile rank in [0, 1]:

- **uncertainty**: the entropy of the run's fine-tuned model's prediction (it is unsure);
- **novelty**: the cosine distance, in that model's features, to the nearest labeled target
  image (nothing labeled looks like it);
- **target-likeness**: `p_target` from the run's discriminator (the source cannot stand in for
  it: the images the transfer helps least).

Their mean is the image's *value*. A batch of `budget` is then picked greedily for value and
diversity together: each pick maximises value x (distance to the labeled set and to the picks
so far), so near-duplicates of a pick lose their claim (a weighted k-center).
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dtl_ray import storage
from dtl_ray.data import decode, manifests, readers, samples
from dtl_ray.errors import RunError
from dtl_ray.method import builders, loops
from dtl_ray.storage import parquet

__all__ = ["Embedder", "Pool", "rank", "pick", "score_pool", "write", "suggest"]

COLUMNS = ["rank", "path", "predicted", "confidence", "entropy", "distance_to_labeled",
           "p_target", "value"]


class Embedder:
    """A Ray Data callable: reads and decodes a batch, returns the model's pooled features
    (L2-normalised), its predicted class, confidence and prediction entropy."""

    def __init__(self, model_uri: str, image_size: samples.Size, max_pixels: int) -> None:
        import torch

        torch.set_num_threads(1)
        self.model, self.meta = builders.load_classifier(model_uri)
        self.dim = self.model.head.in_features
        self.image_size, self.max_pixels = image_size, max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        batch = decode.decode_batch(batch, self.image_size, self.max_pixels)
        ok = batch["error"] == ""
        n, out = len(ok), {"sample_id": batch["sample_id"], "path": batch["path"],
                           "error": batch["error"]}
        feats = np.zeros((n, self.dim), dtype=np.float32)  # rejected rows: zeros
        for k in ("confidence", "entropy"):
            out[k] = np.full(n, np.nan)
        out["pred"] = np.full(n, -1, dtype=np.int64)
        if ok.any():
            with torch.no_grad():
                f = self.model.backbone(loops.to_input(batch["image"][ok]))
                probs = F.softmax(self.model.head(f).float(), dim=1)
            conf, idx = probs.max(1)
            out["confidence"][ok] = conf.numpy()
            out["entropy"][ok] = loops.entropy(probs).numpy()
            out["pred"][ok] = np.asarray(self.meta["classes"])[idx.numpy()]
            feats[ok] = F.normalize(f.float(), dim=1).numpy()
        out["feature"] = feats
        return out


def _pct(x: np.ndarray) -> np.ndarray:
    """Percentile ranks in [0, 1] (ties share the mean rank); NaN counts as the lowest."""
    x = np.nan_to_num(np.asarray(x, dtype=float), nan=-np.inf)
    if len(x) < 2:
        return np.ones(len(x))
    return (pd.Series(x).rank(method="average").to_numpy() - 1) / (len(x) - 1)


def rank(entropy: np.ndarray, distance: np.ndarray, p_target: np.ndarray) -> np.ndarray:
    """Each image's value: the mean percentile rank of its uncertainty, novelty and
    target-likeness (a view that is missing everywhere, as `p_target` without a
    discriminator, is left out)."""
    views = [v for v in (entropy, distance, p_target) if not np.all(np.isnan(v))]
    return np.mean([_pct(v) for v in views], axis=0)


def pick(value: np.ndarray, features: np.ndarray, labeled: np.ndarray,
         budget: int) -> list[int]:
    """`budget` indices into the unlabeled rows: each maximises value x the cosine distance
    to the labeled features and the picks so far (features are L2-normalised)."""
    n = len(value)
    if n == 0 or budget <= 0:
        return []
    dist = (1.0 - (features @ labeled.T).max(axis=1)) if len(labeled) else np.ones(n)
    dist = np.maximum(dist, 0.0)
    chosen: list[int] = []
    free = np.ones(n, dtype=bool)
    for _ in range(min(budget, n)):
        gain = np.where(free, value * (dist + 1e-6), -np.inf)
        i = int(np.argmax(gain))
        chosen.append(i)
        free[i] = False
        dist = np.minimum(dist, np.maximum(1.0 - features @ features[i], 0.0))
    return chosen


RANKED = "ranked by uncertainty, novelty and target-likeness, with diversity across the batch"


def _thumb(path: str, size: int = 96) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(path))) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _sheet(df: pd.DataFrame, run: str, budget: int, how: str) -> str:
    cells = []
    for r in df.itertuples():
        try:
            img = f"<img src='data:image/png;base64,{_thumb(r.path)}'>"
        except Exception as e:  # noqa: BLE001 (a thumbnail is not worth failing the sheet)
            img = f"<i>{html.escape(type(e).__name__)}</i>"
        cells.append(
            f"<figure>{img}<figcaption>#{r.rank} {html.escape(r.path.rsplit('/', 1)[-1])}"
            f"<br>model says {html.escape(str(r.predicted))} ({r.confidence:.2f}), value "
            f"{r.value:.2f}<br>novelty {r.distance_to_labeled:.2f}, p_target "
            f"{r.p_target:.2f}</figcaption></figure>")
    style = ("body{font-family:sans-serif}figure{display:inline-block;width:170px;margin:6px;"
             "vertical-align:top;font-size:11px}img{width:96px;image-rendering:pixelated}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>label next: {run}"
            f"</title><style>{style}</style></head><body><h1>Label these {budget} images next"
            f"</h1><p>Run {html.escape(run)}; {html.escape(how)}.</p>{''.join(cells)}"
            "</body></html>")


@dataclass
class Pool:
    """The unlabeled target images a run can suggest from, scored by its model."""

    table: pd.DataFrame
    """One row per decodable unlabeled image: sample_id, path, predicted (class name),
    confidence, entropy, distance_to_labeled, p_target, value."""
    features: np.ndarray
    """Their features (rows of `table`; L2-normalised)."""
    labeled: np.ndarray
    """The labeled target images' features."""
    unlabeled: int
    """Unlabeled images in the run's manifest (`table` lacks the unreadable ones)."""


def score_pool(run_dir: str, arm: str = "chosen") -> Pool:
    """Every decodable unlabeled target image of a run with its value (`rank`).

    Raises:
        RunError: not a run, its model is missing, or it has no unlabeled images.
    """
    import ray
    import ray.data

    from dtl_ray.inference import predict
    from dtl_ray.raykit import connect

    layout, cfg, names, model_uri = predict.run_files(run_dir, arm)
    manifest = manifests.load(layout)
    unl, lab = manifest.rows("target", "unlabeled"), manifest.rows("target", "train")
    if unl.empty:
        raise RunError(f"run {run_dir} has no unlabeled target images to suggest from")
    dcfg = cfg.get("data", {})
    connect.ensure_ray()
    readers.configure_context()
    rows = pd.concat([unl, lab])[[samples.SAMPLE_ID, samples.DOMAIN, samples.SPLIT, samples.PATH]]
    chunks = [rows.iloc[i:i + 256].reset_index(drop=True) for i in range(0, len(rows), 256)]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    emb = ray.data.from_pandas(chunks).map_batches(
        Embedder, fn_constructor_kwargs={
            "model_uri": model_uri, "image_size": predict.frame(cfg),
            "max_pixels": int(dcfg.get("max_image_pixels", decode.DEFAULT_MAX_PIXELS))},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cpus)),
        batch_size=64, batch_format="numpy",
        max_task_retries=decode.TASK_RETRIES["max_retries"])
    got = {k: [] for k in ("sample_id", "path", "error", "confidence", "entropy", "pred",
                           "feature")}
    for b in emb.iter_batches(batch_format="numpy", batch_size=None):
        for k in got:
            got[k].append(b[k] if k != "feature" else np.asarray(b[k], dtype=np.float32))
    feats = np.concatenate(got["feature"])
    table = pd.DataFrame({k: np.concatenate(v) for k, v in got.items() if k != "feature"})
    ok = (table["error"] == "").to_numpy()
    is_lab = table["sample_id"].isin(set(lab[samples.SAMPLE_ID])).to_numpy()
    cand = np.flatnonzero(ok & ~is_lab)
    labeled = feats[ok & is_lab]
    p = np.full(len(cand), np.nan)
    if storage.exists(layout.scores):
        scores = parquet.read_df(layout.scores, [samples.SAMPLE_ID, "p_target"])
        p = (scores.set_index(samples.SAMPLE_ID)["p_target"]
             .reindex(table["sample_id"].iloc[cand]).to_numpy(float))
    f_c = feats[cand]
    dist = (np.maximum(1.0 - (f_c @ labeled.T).max(axis=1), 0.0) if len(labeled)
            else np.ones(len(cand)))
    sel = table.iloc[cand]
    pool = pd.DataFrame({
        "sample_id": sel["sample_id"].to_numpy(), "path": sel["path"].to_numpy(),
        "predicted": [names[int(c)] for c in sel["pred"]],
        "confidence": sel["confidence"].to_numpy(), "entropy": sel["entropy"].to_numpy(),
        "distance_to_labeled": dist, "p_target": p,
        "value": rank(sel["entropy"].to_numpy(), dist, p)})
    return Pool(table=pool, features=f_c, labeled=labeled, unlabeled=int(len(unl)))


def write(picked: pd.DataFrame, out: str, run_dir: str, how: str = RANKED) -> str:
    """The picks (rows of a `Pool.table`, in order) as a CSV at `out` and a contact sheet
    beside it (`how`: how they were picked); returns the sheet's path."""
    out_df = picked.assign(rank=np.arange(1, len(picked) + 1))[COLUMNS]
    storage.write_bytes(out, out_df.to_csv(index=False).encode())
    sheet = out.rsplit(".", 1)[0] + ".html"
    storage.write_bytes(sheet, _sheet(out_df, run_dir, len(out_df), how).encode())
    return sheet


def suggest(run_dir: str, budget: int, out: str, arm: str = "chosen") -> dict:
    """Writes the `budget` unlabeled target images to label next to `out` (CSV) and a
    contact sheet beside it (`out` with .html). Returns counts and the file names.

    Raises:
        RunError: not a run, or its model is missing.
    """
    t0 = time.time()
    pool = score_pool(run_dir, arm)
    chosen = pick(pool.table["value"].to_numpy(), pool.features, pool.labeled, budget)
    sheet = write(pool.table.iloc[chosen], out, run_dir)
    return {"suggested": int(len(chosen)), "unlabeled": pool.unlabeled,
            "unreadable": pool.unlabeled - int(len(pool.table)),
            "labeled": int(len(pool.labeled)), "csv": out, "sheet": sheet,
            "seconds": round(time.time() - t0, 2)}
