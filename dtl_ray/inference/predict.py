"""Using a finished run's model outside the pipeline: `dtl-ray predict` labels new images
through Ray Data (`export.py` writes the model for other tools).

Both read what the run wrote (its config, class names, fine-tuned models, discriminator), so
they apply the run's own image size, pixel limit and normalisation.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from dtl_ray import storage
from dtl_ray.config import ModelConfig, from_dict
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import decode, readers, samples
from dtl_ray.errors import DataError, RunError
from dtl_ray.method import scoring
from dtl_ray.storage import checkpoints, parquet

__all__ = ["predict", "list_images", "Predictor", "run_files", "predictor_kwargs", "frame"]

COLUMNS = ["path", "class", "label", "confidence", "p_target", "error"]



def run_files(run_dir: str, arm: str) -> tuple[RunLayout, dict, list[str], str]:
    """(layout, the run's config as a dict, class names, the model's URI)."""
    import yaml

    layout = RunLayout(run_dir.rstrip("/"))
    if not storage.exists(layout.config):
        raise RunError(f"{run_dir} is not a dtl-ray run (no config.yaml)")
    model_uri = layout.model(arm)
    if not storage.exists(model_uri):
        raise RunError(f"run {run_dir} has no model '{arm}' (has its finetune stage finished? "
                       "models: method, chosen, label_free, and the baselines)")
    cfg = yaml.safe_load(storage.read_bytes(layout.config)) or {}
    return layout, cfg, list(storage.read_json(layout.classes)), model_uri


def list_images(uri: str, extensions: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every image below `uri` (any depth) as rows for the readers, and the files that are
    rejected from their names alone (not UTF-8), with the reason. `._name` files (macOS
    metadata) are not images."""
    if not storage.exists(uri):
        raise DataError(f"images not found: {uri}")
    exts = tuple(e.lower() for e in extensions)
    good, bad = [], []
    for rel, _ in storage.list_files(uri):
        if not rel.lower().endswith(exts) or rel.rsplit("/", 1)[-1].startswith("._"):
            continue
        if storage.is_utf8(rel):
            good.append((rel, "new", "predict", storage.join(uri, rel)))
        else:
            bad.append((storage.printable(storage.join(uri, rel)),
                        "file name is not valid UTF-8: rename it"))
    rows = pd.DataFrame(good, columns=[samples.SAMPLE_ID, samples.DOMAIN, samples.SPLIT,
                                       samples.PATH])
    return rows, pd.DataFrame(bad, columns=["path", "error"])


def predictor_kwargs(run_dir: str, arm: str, use_gpu: bool) -> tuple[RunLayout, dict, list[str],
                                                                     dict]:
    """(layout, the run's config, class names, the `Predictor` arguments of model `arm`):
    the run's own image size and pixel limit, its discriminator when it has one."""
    layout, cfg, names, model_uri = run_files(run_dir, arm)
    _, meta = checkpoints.read_classifier(model_uri)
    disc = layout.discriminator if storage.exists(layout.discriminator) else None
    return layout, cfg, names, {
        "model_uri": model_uri, "classes": list(meta["classes"]), "disc_uri": disc,
        "image_size": frame(cfg), "use_gpu": use_gpu,
        "max_pixels": int(cfg.get("data", {}).get("max_image_pixels",
                                                  decode.DEFAULT_MAX_PIXELS))}


def frame(cfg: dict) -> samples.Size:
    """How a run decodes its images (`samples.Size`), from its saved config."""
    return from_dict(ModelConfig, cfg.get("model", {}), "model.").frame


class Predictor:
    """A Ray Data callable: reads and decodes a batch of files, then the run's model gives
    each image its class and confidence, and the run's discriminator (on the backbone it was
    trained on) the probability that the image is target-like (`p_target`: the mean of its
    folds' calibrated outputs, no fold having seen the image)."""

    def __init__(self, model_uri: str, classes: list[int], disc_uri: str | None,
                 image_size: samples.Size, max_pixels: int, use_gpu: bool = False) -> None:
        self.image_size, self.max_pixels = image_size, max_pixels
        self.model = scoring.Scorer(model_uri, classes, use_gpu=use_gpu)
        self.domain = None
        if disc_uri is not None:
            _, meta = checkpoints.read_discriminator(disc_uri)
            self.domain = scoring.Scorer(meta["model"], classes, disc_uri, use_gpu=use_gpu)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.label(decode.decode_batch(batch, self.image_size, self.max_pixels))

    def label(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A decoded batch (`image`, `error`, `path`, `sample_id`, `domain`, `split`): each
        row's label, confidence and p_target (decoded once for both models)."""
        out = self.model(batch)
        p = self.domain(batch)["p_target"] if self.domain is not None else np.full(
            len(out["pred"]), np.nan)
        return {"path": out["path"], "label": out["pred"], "confidence": out["confidence"],
                "p_target": p, "error": out["error"]}


def predict(run_dir: str, images: str, out: str, arm: str = "chosen", batch_size: int = 64,
            use_gpu: bool = False) -> dict:
    """Labels every image below `images` with the run's `arm` model; writes `out` (CSV when
    it ends with .csv, else Parquet): path, class, label, confidence, p_target, error (rows
    that cannot be read keep their reason, as in the pipeline). Returns the counts.

    Raises:
        RunError: not a run, or its model is missing.
        DataError: no images there.
    """
    import ray
    import ray.data

    from dtl_ray.raykit import connect

    t0 = time.time()
    _, cfg, names, kwargs = predictor_kwargs(run_dir, arm, use_gpu)
    extensions = cfg.get("data", {}).get("extensions", [".png", ".jpg", ".jpeg"])
    rows, bad = list_images(images, extensions)
    if rows.empty and bad.empty:
        raise DataError(f"no images below {images}")
    connect.ensure_ray()
    readers.configure_context()
    parts = []
    if len(rows):
        chunks = [rows.iloc[i:i + 256].reset_index(drop=True) for i in range(0, len(rows), 256)]
        cpus = int(ray.cluster_resources().get("CPU", 1))
        ds = ray.data.from_pandas(chunks).map_batches(
            Predictor, fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cpus)),
            batch_size=batch_size, batch_format="numpy", num_gpus=1 if use_gpu else 0,
            max_task_retries=decode.TASK_RETRIES["max_retries"])
        parts.append(ds.to_pandas())  # one row of scalars per image: O(rows), no pixels
    if len(bad):
        parts.append(bad.assign(label=-1, confidence=np.nan, p_target=np.nan))
    df = pd.concat(parts, ignore_index=True)
    ok = df["error"] == ""
    df["label"] = df["label"].astype(np.int64)
    df["class"] = [names[i] if good else "" for i, good in zip(df["label"], ok)]
    df = df.reindex(columns=COLUMNS).sort_values("path", kind="stable").reset_index(drop=True)
    if out.lower().endswith(".csv"):
        storage.write_bytes(out, df.to_csv(index=False).encode())
    else:
        parquet.write_df(df, out)
    counts = {"images": int(len(df)), "predicted": int(ok.sum()), "rejected": int((~ok).sum()),
              "model": arm, "seconds": round(time.time() - t0, 2)}
    return counts
