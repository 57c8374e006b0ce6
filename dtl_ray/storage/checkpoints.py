"""The one place that knows the checkpoint layout.

A checkpoint is one file, `model.pt`: a dict of plain data and tensors,
`{"format": "dtl-ray/1", "state": {name: state_dict}, "meta": {...}}`, read with
`torch.load(weights_only=True)` so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import os

import torch

from dtl_ray import storage
from dtl_ray.errors import CheckpointError

__all__ = ["FORMAT", "save", "load", "save_dir", "load_dir", "load_weights",
           "save_classifier", "read_classifier", "save_discriminator", "read_discriminator"]

FORMAT = "dtl-ray/1"
FILE = "model.pt"



def _to_bytes(state: dict, meta: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "state": state, "meta": meta}, buf)
    return buf.getvalue()


def _from_bytes(data: bytes, where: str) -> dict:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{where} is not a loadable checkpoint: "
                              f"{str(e).splitlines()[0][:200]}") from None
    return obj


def save(uri: str, state: dict, meta: dict) -> None:
    """Writes a checkpoint file atomically. `state` maps names to state_dicts."""
    storage.write_bytes(uri, _to_bytes(state, meta))


def load(uri: str) -> tuple[dict, dict]:
    """Returns (state, meta) of a checkpoint file written by `save`."""
    obj = _from_bytes(storage.read_bytes(uri), uri)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{uri} is not a dtl-ray checkpoint")
    return obj["state"], obj["meta"]


CLASSIFIER_KEYS = ("backbone", "num_classes", "classes")
DISCRIMINATOR_KEYS = ("layer", "in_dim", "hidden", "n_source", "n_target", "balanced", "platt",
                      "heldout_fraction")


def save_classifier(uri: str, model_state: dict, backbone: str, classes: list,
                    **extra) -> None:
    """A classifier (backbone + head over `classes`) with the meta its readers rely on;
    `extra` adds descriptive keys (arm, trial id, accuracies)."""
    meta = {"backbone": backbone, "num_classes": len(classes), "classes": list(classes), **extra}
    save(uri, {"model": model_state}, meta)


def read_classifier(uri: str) -> tuple[dict, dict]:
    """(model state_dict, meta) of a classifier checkpoint written by `save_classifier`.

    Raises:
        CheckpointError: the file is not a classifier checkpoint (for example a discriminator).
    """
    return _checked(uri, "model", CLASSIFIER_KEYS, "classifier")


def save_discriminator(uri: str, folds: list[dict], platt: list, heldout_fraction: float,
                       layer: str | None, in_dim: int, hidden: int, n_source: int,
                       n_target: int, balanced: bool, **extra) -> None:
    """Cross-fitted domain discriminators on the features of `layer`: one state_dict per fold
    with its Platt parameters (a, b), the held-out fraction that (with the sample ids) tells
    which rows each fold trained on (`calibration.fold_of`), and the domain sizes it saw."""
    if len(folds) != len(platt):
        raise ValueError("one (a, b) per fold")
    save(uri, {"discriminator": list(folds)}, {
        "layer": layer, "in_dim": in_dim, "hidden": hidden, "n_source": n_source,
        "n_target": n_target, "balanced": balanced, "platt": [list(map(float, ab))
                                                              for ab in platt],
        "heldout_fraction": float(heldout_fraction), **extra})


def read_discriminator(uri: str) -> tuple[dict, dict]:
    """(list of per-fold state_dicts, meta) of a file written by `save_discriminator`."""
    return _checked(uri, "discriminator", DISCRIMINATOR_KEYS, "discriminator")


def _checked(uri: str, name: str, keys: tuple[str, ...], what: str) -> tuple[dict, dict]:
    state, meta = load(uri)
    missing = [k for k in keys if k not in meta]
    if name not in state or missing:
        raise CheckpointError(f"{uri} is a dtl-ray checkpoint but not a {what} "
                              f"(it holds {sorted(state)})")
    return state[name], meta


def save_dir(directory: str, state: dict, meta: dict) -> None:
    """Writes `model.pt` into a local directory (a Ray Train/Tune checkpoint directory)."""
    with open(os.path.join(directory, FILE), "wb") as f:
        f.write(_to_bytes(state, meta))


def load_dir(directory: str) -> tuple[dict, dict]:
    return load(os.path.join(directory, FILE))


def load_weights(uri: str) -> tuple[str, dict]:
    """Reads `model.weights`: our checkpoint or a plain torchvision state_dict.

    Returns ("ours", state) or ("torchvision", state_dict).
    """
    if not storage.exists(uri):
        raise CheckpointError(f"model.weights file not found: {uri}")
    try:
        raw = storage.read_bytes(uri)
    except OSError as e:  # a folder, no permission (transient errors were retried inside)
        raise CheckpointError(f"model.weights {uri} cannot be read: "
                              f"{str(e).splitlines()[0][:160]}") from None
    obj = _from_bytes(raw, f"model.weights {uri}")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return "ours", obj["state"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "torchvision", obj
    raise CheckpointError(f"model.weights {uri} holds neither a dtl-ray checkpoint nor a "
                          "state_dict of tensors")
