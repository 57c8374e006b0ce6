"""Callable classes for Ray Data `map_batches` actor pools: load models once, score batches.

Used by the score stage (source model + discriminator), by fine-tuning (pseudo-labels from the
teacher) and by evaluation (several models over target test).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dtl_ray.config import ScalingConfig, ScoreConfig
from dtl_ray.data import readers, samples
from dtl_ray.method import builders, calibration, loops, models, weighting
from dtl_ray.storage import checkpoints

__all__ = ["Scorer", "MultiEvaluator", "actor_pool", "score_dataset"]


def _device(use_gpu: bool) -> str:
    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


class Scorer:
    """Scores decoded batches: p_target (with its calibrated logit `logit_target`), weight, and
    the classifier's pred/confidence/entropy.

    The discriminator file holds one D per fold (cross-fitting): a row one of them trained on
    is scored by the D of its own fold, which never saw it; other rows by the mean of the
    folds' calibrated logits (`calibration`).

    Rejected rows (non-empty `error`) pass through with NaN scores so none is lost.
    Predictions are over `classes` (global ids; the target's classes), returned as global ids.
    A batch without an `image` column is decoded here first (`samples.decode_batch`), so the
    actor reads, decodes and scores in one step.
    """

    def __init__(self, model_uri: str, classes: list[int], disc_uri: str | None = None,
                 n_source: int = 1, n_target: int = 1, clip: float = 0.01, cap: float = 20.0,
                 use_gpu: bool = False, image_size: int | None = None,
                 weighting: str = "density_ratio",
                 max_pixels: int = samples.DEFAULT_MAX_PIXELS) -> None:
        self.device = _device(use_gpu)
        self.image_size, self.max_pixels = image_size, max_pixels
        self.weighting = weighting
        self.model, meta = builders.load_classifier(model_uri)
        self.model = loops.for_device(self.model, self.device)
        self.classes = list(classes)
        self.restrict = meta["num_classes"] != len(self.classes)  # source head: all classes
        self.discs, self.tap, self.platt, self.heldout_fraction = [], None, [], 0.0
        if disc_uri is not None:
            states, dmeta = checkpoints.read_discriminator(disc_uri)
            self.tap = models.FeatureTap(self.model.backbone, dmeta["layer"]).eval().to(self.device)
            for state in states:
                disc = models.Discriminator(dmeta["in_dim"], dmeta["hidden"])
                disc.load_state_dict(state)
                self.discs.append(disc.eval().to(self.device))
            self.platt = [tuple(ab) for ab in dmeta["platt"]]
            self.heldout_fraction = dmeta["heldout_fraction"]
        self.n_source, self.n_target, self.clip, self.cap = n_source, n_target, clip, cap

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "image" not in batch:
            batch = samples.decode_batch(batch, self.image_size, self.max_pixels)
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
                if self.tap is not None and self.tap.layer is None:  # D reads g's output:
                    f = self.model.backbone(x)  # one backbone pass serves both
                    logits = self.model.head(f).float()  # (B, K)
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
        self.device = _device(use_gpu)
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


def actor_pool(requested: int, cpus_per_actor: int, use_gpu: bool,
               spare_cpus: int = 0) -> int | None:
    """Scoring actors: `requested`, or the most the cluster can hold (its nodes and what its
    autoscaler can add): one per GPU, or its CPUs less `spare_cpus` kept for upstream read
    and decode tasks; None when an autoscaler may add nodes without saying how many (the
    pool then grows as far as Ray Data and the autoscaler take it)."""
    if requested > 0:
        return requested
    from dtl_ray.raykit import capacity

    most = capacity.most("GPU" if use_gpu else "CPU")
    if most is None:
        return None
    if use_gpu:
        return max(1, most)
    return max(1, (most - spare_cpus) // max(cpus_per_actor, 1))


def score_dataset(rows, model_uri: str, classes: list[int], score: ScoreConfig,
                  scaling: ScalingConfig, image_size: int, disc_uri: str | None = None,
                  max_pixels: int = samples.DEFAULT_MAX_PIXELS):
    """The lazy Ray Dataset of `rows` decoded and scored by an actor pool of `Scorer`s.

    On CPU, the actors read and decode image-folder rows themselves: no image bytes go
    through the object store and every CPU can hold an actor. On GPU, CPU tasks decode and
    the GPU actors only run the models. Packed rows are read and decoded by tasks.
    """
    import ray.data

    n_source = n_target = 1
    if disc_uri is not None:
        _, meta = checkpoints.read_discriminator(disc_uri)
        if not meta["balanced"]:  # D learnt the domains' real prior ratio: undo it
            n_source, n_target = meta["n_source"], meta["n_target"]
    use_gpu = scaling.use_gpu
    packed = "shard" in rows and bool((rows["shard"] != "").any())
    # on CPU, image-folder rows are read and decoded by the actors themselves; packed rows
    # (and all rows on GPU) by upstream tasks, which keep a CPU free for them
    in_actor = not use_gpu and not packed
    size = actor_pool(score.actors, scaling.cpus_per_worker, use_gpu,
                      spare_cpus=0 if in_actor else 1)
    # blocks small enough that every actor gets several (balance), at most 512 rows
    block = int(min(512, max(score.batch_size, -(-len(rows) // (4 * (size or 8))))))
    parts = [ds for _, ds in readers.dataset_parts(rows, image_size, block,
                                                 decode_files=not in_actor,
                                                 max_pixels=max_pixels)]
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    # a fixed pool when asked for; else a range: it grows while blocks wait (Ray Data asks the
    # autoscaler for the actors' resources) up to what the cluster can hold
    compute = (ray.data.ActorPoolStrategy(size=size) if score.actors > 0 else
               ray.data.ActorPoolStrategy(min_size=1, max_size=size))  # size None: no cap
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"model_uri": model_uri, "classes": classes,
                               "disc_uri": disc_uri, "n_source": n_source,
                               "n_target": n_target, "clip": score.clip,
                               "cap": score.max_weight, "use_gpu": use_gpu,
                               "image_size": image_size, "weighting": score.weighting,
                               "max_pixels": max_pixels},
        compute=compute,
        batch_size=score.batch_size,
        batch_format="numpy",
        num_cpus=scaling.cpus_per_worker,
        num_gpus=1 if use_gpu else 0,
        # a task that raised a transient read fault (`readers.configure_context`) or lost its
        # actor is tried again, a bounded number of times
        max_task_retries=samples.TASK_RETRIES["max_retries"],
    )
