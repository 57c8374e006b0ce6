"""Callable classes for Ray Data `map_batches` actor pools: load models once, score batches.

Used by the score stage (source model + discriminator), by fine-tuning (pseudo-labels from the
teacher) and by evaluation (several models over target test).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dtl_ray.config import ScoreConfig
from dtl_ray.data import decode
from dtl_ray.method import builders, calibration, domain, loops, weighting
from dtl_ray.storage import checkpoints

__all__ = ["Scorer", "MultiEvaluator", "scorer_kwargs"]


class Scorer:
    """Scores decoded batches: p_target (with its calibrated logit `logit_target`), weight, and
    the classifier's pred/confidence/entropy.

    The discriminator file holds one D per fold (cross-fitting): a row one of them trained on
    is scored by the D of its own fold, which never saw it; other rows by the mean of the
    folds' calibrated logits (`calibration`).

    Rejected rows (non-empty `error`) pass through with NaN scores so none is lost.
    Predictions are over `classes` (global ids; the target's classes), returned as global ids.
    A batch without an `image` column is decoded here first (`decode.decode_batch`), so the
    actor reads, decodes and scores in one step.
    """

    def __init__(self, model_uri: str, classes: list[int], disc_uri: str | None = None,
                 n_source: int = 1, n_target: int = 1, clip: float = 0.01, cap: float = 20.0,
                 use_gpu: bool = False, image_size: int | None = None,
                 weighting: str = "density_ratio",
                 max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> None:
        self.device = loops.local_device(use_gpu)
        self.image_size, self.max_pixels = image_size, max_pixels
        self.weighting = weighting
        self.model, meta = builders.load_classifier(model_uri)
        self.model = loops.for_device(self.model, self.device)
        self.classes = list(classes)
        self.restrict = meta["num_classes"] != len(self.classes)  # source head: all classes
        self.discs, self.tap, self.platt, self.heldout_fraction = [], None, [], 0.0
        if disc_uri is not None:
            states, dmeta = checkpoints.read_discriminator(disc_uri)
            self.tap = domain.FeatureTap(self.model.backbone, dmeta["layer"]).eval().to(self.device)
            for state in states:
                disc = domain.discriminator(dmeta["layer"], dmeta["in_dim"], dmeta["hidden"])
                disc.load_state_dict(state)
                self.discs.append(disc.eval().to(self.device))
            self.platt = [tuple(ab) for ab in dmeta["platt"]]
            self.heldout_fraction = dmeta["heldout_fraction"]
        self.n_source, self.n_target, self.clip, self.cap = n_source, n_target, clip, cap

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "image" not in batch:
            batch = decode.decode_batch(batch, self.image_size, self.max_pixels)
        ok = batch["error"] == ""
        n = len(ok)
        out = {k: v for k, v in batch.items() if k != "image"}
        for k in ("p_target", "logit_target", "weight", "confidence", "entropy"):
            out[k] = np.full(n, np.nan, dtype=np.float64)
        out["pred"] = np.full(n, -1, dtype=np.int64)
        out["capped"] = np.zeros(n, dtype=np.int8)
        if ok.any():
            x = loops.to_input(batch["image"][ok], self.device)  # (B, 3, H, W)
            f = None
            with loops.autocast(self.device):
                if self.tap is not None and self.tap.layer in (None, domain.STYLES):
                    f, g = self.tap.with_output(x)  # one backbone pass serves D and the head
                    logits = self.model.head(g).float()  # (B, K)
                else:
                    logits = self.model(x).float()  # (B, K)
            if self.restrict:
                logits = logits[:, self.classes]  # (B, K_t)
            probs = F.softmax(logits, dim=1).cpu()
            conf, idx = probs.max(1)
            out["pred"][ok] = np.asarray(self.classes)[idx.numpy()]
            out["confidence"][ok] = conf.numpy()
            out["entropy"][ok] = loops.entropy(probs).numpy()
            if self.discs:
                if f is None:
                    with loops.autocast(self.device):
                        f = self.tap(x)
                z = self._logit(f.float(), {k: batch[k][ok] for k in
                                            ("sample_id", "domain", "split")})
                p = calibration.sigmoid(z)
                w, capped = weighting.importance_weights(self.weighting, p, self.n_source,
                                                         self.n_target, self.clip, self.cap)
                out["p_target"][ok] = p
                out["logit_target"][ok] = z
                out["weight"][ok] = w
                out["capped"][ok] = capped
        return out

    def _logit(self, f: torch.Tensor, rows: dict[str, np.ndarray]) -> np.ndarray:
        """Each row's calibrated logit: its own fold's D when a D trained on it, else the
        folds' mean."""
        cal = np.stack([calibration.apply_platt(d(f).double().cpu().numpy(), ab)
                        for d, ab in zip(self.discs, self.platt, strict=True)])  # (K, B)
        trained = calibration.in_training(rows["domain"], rows["split"], rows["sample_id"],
                                          self.heldout_fraction)
        fold = calibration.fold_of(rows["sample_id"], trained, len(self.discs))
        z = cal.mean(axis=0)
        own = fold != calibration.HELD_OUT
        z[own] = cal[fold[own], np.flatnonzero(own)]
        return z


class MultiEvaluator:
    """Per-row prediction and cross-entropy of several classifiers over the target classes."""

    def __init__(self, model_uris: dict[str, str], classes: list[int],
                 use_gpu: bool = False) -> None:
        self.device = loops.local_device(use_gpu)
        self.models = {k: builders.load_classifier(u) for k, u in model_uris.items()}
        self.models = {k: (loops.for_device(m, self.device), meta)
                       for k, (m, meta) in self.models.items()}
        self.classes = list(classes)
        self.local = np.full(max(self.classes) + 1, -1, dtype=np.int64)  # global id -> local
        self.local[self.classes] = np.arange(len(self.classes))

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        out = {k: batch[k][ok] for k in ("sample_id", "label")}
        x = loops.to_input(batch["image"][ok], self.device)
        y = torch.from_numpy(self.local[batch["label"][ok].astype(np.int64)])
        for name, (model, meta) in self.models.items():
            with loops.autocast(self.device):
                logits = model(x).float().cpu()
            if meta["num_classes"] != len(self.classes):  # the source model: restrict its head
                logits = logits[:, self.classes]
            out[f"pred__{name}"] = np.asarray(self.classes)[logits.argmax(1).numpy()]
            out[f"loss__{name}"] = F.cross_entropy(logits, y, reduction="none").numpy()
        return out


def scorer_kwargs(model_uri: str, classes: list[int], score: ScoreConfig, use_gpu: bool,
                  image_size,
                  disc_uri: str | None = None,
                  max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> dict:
    """`Scorer`'s arguments for a `score` section: with the domain sizes when
    the discriminator learnt the domains' real prior ratio (not balanced), to undo it."""
    n_source = n_target = 1
    if disc_uri is not None:
        _, meta = checkpoints.read_discriminator(disc_uri)
        if not meta["balanced"]:
            n_source, n_target = meta["n_source"], meta["n_target"]
    return {"model_uri": model_uri, "classes": classes, "disc_uri": disc_uri,
            "n_source": n_source, "n_target": n_target, "clip": score.clip,
            "cap": score.max_weight, "use_gpu": use_gpu, "image_size": image_size,
            "weighting": score.weighting, "max_pixels": max_pixels}
