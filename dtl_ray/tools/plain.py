"""Plain PyTorch references for `dtl-ray perf`: the same decode, model, batches and threads as
the Ray path, without Ray (a DataLoader scoring loop and a plain training loop).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from dtl_ray import storage
from dtl_ray.config import PipelineConfig
from dtl_ray.data import decode
from dtl_ray.method import builders, loops, scoring

__all__ = ["score_plain", "train_plain"]


class _Files(torch.utils.data.Dataset):
    """Manifest rows -> (index, decoded uint8 image): the decode the Ray path does."""

    def __init__(self, paths: list[str], image_size: int) -> None:
        self.paths, self.size = paths, image_size
        self.fs = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.fs is None:
            self.fs = storage.resolve(self.paths[0])[0]
        raw = storage.read_file(self.fs, storage.path_of(self.paths[i]))
        return i, torch.from_numpy(decode.decode_image(raw, self.size))


def score_plain(rows: pd.DataFrame, model_uri: str, disc_uri: str, classes: list[int],
                out_uri: str, image_size: int, batch_size: int, decode_workers: int,
                threads: int) -> dict:
    """The plain PyTorch loop: DataLoader decode, the same Scorer forward, a Parquet write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    torch.set_num_threads(threads)
    t0 = time.time()
    scorer = scoring.Scorer(model_uri, classes, disc_uri)
    loader = torch.utils.data.DataLoader(
        _Files(rows["path"].tolist(), image_size), batch_size=batch_size,
        num_workers=decode_workers, persistent_workers=False,
        prefetch_factor=4 if decode_workers else None)
    fs, path = storage.resolve(out_uri)
    fs.create_dir(path, recursive=True)
    writer, n = None, 0
    cols = {c: rows[c].to_numpy() for c in ("sample_id", "domain", "split", "path", "label")}
    for idx, images in loader:
        idx = idx.numpy()
        batch = {c: v[idx] for c, v in cols.items()}
        batch["image"] = images.numpy()
        batch["error"] = np.full(len(idx), "", dtype=object)
        out = scorer(batch)
        table = pa.table({k: out[k] for k in ("sample_id", "domain", "split", "path", "label",
                                               "p_target", "weight", "pred", "confidence",
                                               "entropy")})
        if writer is None:
            writer = pq.ParquetWriter(fs.open_output_stream(f"{path}/part-0.parquet"),
                                      table.schema)
        writer.write_table(table)
        n += len(idx)
    if writer is not None:
        writer.close()
    seconds = time.time() - t0
    return {"images": n, "seconds": round(seconds, 3),
            "images_per_second": round(n / seconds, 1)}


def _decoded(rows: pd.DataFrame, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    b = decode.decode_batch({"path": rows["path"].to_numpy()}, image_size)
    return b["image"], rows["label"].to_numpy()


def train_plain(cfg: PipelineConfig, rows: pd.DataFrame, val: pd.DataFrame,
                num_classes: int, epochs: int, shuffle: bool = True) -> dict:
    """`epochs` pretrain epochs (train pass + source-val pass) in a plain PyTorch loop with the
    threads one Train worker gets; per-epoch seconds and source val accuracy.

    shuffle=False feeds `rows` in their order (a manifest's: sorted by class)."""
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    x, y = _decoded(rows, cfg.model.image_size)
    vx, vy = _decoded(val, cfg.model.image_size)
    torch.manual_seed(cfg.seed)
    model = builders.classifier(cfg.model, num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain.lr,
                            weight_decay=cfg.pretrain.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug = builders.augment(cfg.pretrain)
    bs = cfg.data.batch_size
    seconds, accuracy = [], []
    for epoch in range(epochs):
        t0 = time.time()
        order = (np.random.default_rng(cfg.seed * 1000 + epoch).permutation(len(x)) if shuffle
                 else np.arange(len(x)))
        batches = ((x[order[i:i + bs]], y[order[i:i + bs]]) for i in range(0, len(x), bs))
        loops.train_epoch(model, batches, opt, aug, gen)
        accuracy.append(loops.evaluate(loops.predict(model, vx, 4 * bs), vy)["accuracy"])
        seconds.append(time.time() - t0)
    return {"epoch_seconds": [round(s, 3) for s in seconds], "images": len(x),
            "val_accuracy": [round(a, 4) for a in accuracy]}
