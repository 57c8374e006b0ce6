"""Builders: config sections -> the objects several stages share (torchtune's builders).

Stages never import each other; what two stages both need is built here, from the config
section it depends on, not from the whole pipeline config.
"""

from __future__ import annotations

from dtl_ray.config import FinetuneConfig, ModelConfig, PretrainConfig
from dtl_ray.errors import CheckpointError, ModelError
from dtl_ray.method import loops, models
from dtl_ray.method.consistency import Consistency
from dtl_ray.storage import checkpoints

__all__ = ["augment", "initial_weights", "classifier", "load_classifier", "consistency"]


def augment(p: PretrainConfig) -> loops.Augment:
    """The training augmentation (every training stage uses pretraining's settings)."""
    return loops.Augment(rotation=p.rotation, crop=p.crop, flip=p.flip,
                         brightness=p.brightness, contrast=p.contrast)


def initial_weights(weights: str | None) -> tuple[dict | None, dict | None]:
    """(full-model state_dict for build_backbone, our classifier state) from `model.weights`."""
    if weights is None:
        return None, None
    kind, state = checkpoints.load_weights(weights)
    if kind == "torchvision":
        return state, None
    if "model" not in state:
        raise CheckpointError(f"model.weights {weights} is a dtl-ray checkpoint but "
                                          f"not a classifier (it holds {sorted(state)})")
    return None, state["model"]


def classifier(m: ModelConfig, num_classes: int) -> models.Classifier:
    """The classifier pretraining starts from: `m.backbone` with `m.weights`, a fresh head.

    Raises:
        ModelError: an unknown backbone, or weights that do not fit it.
    """
    tv_weights, ours = initial_weights(m.weights)
    model = models.build_classifier(m.backbone, num_classes, tv_weights)
    if ours is not None:  # our checkpoint: take the backbone, keep a fresh head
        backbone = {k[len("backbone."):]: v for k, v in ours.items() if k.startswith("backbone.")}
        try:
            model.backbone.load_state_dict(backbone)
        except RuntimeError as e:
            raise ModelError(f"model.weights do not fit backbone {m.backbone}: "
                                    f"{str(e).splitlines()[0]}") from None
    return model


def load_classifier(uri: str) -> tuple[models.Classifier, dict]:
    """A trained classifier from a dtl-ray checkpoint (eval mode) and its meta."""
    state, meta = checkpoints.read_classifier(uri)
    model = models.build_classifier(meta["backbone"], meta["num_classes"])
    model.load_state_dict(state)
    return model.eval(), meta


def consistency(f: FinetuneConfig) -> Consistency | None:
    """The fine-tuning consistency term of `finetune.consistency_*` (None when its weight is
    0: off)."""
    if f.consistency_weight <= 0:
        return None
    return Consistency(weight=f.consistency_weight, threshold=f.consistency_threshold,
                       unlabeled_ratio=f.unlabeled_ratio, align=f.distribution_alignment)
