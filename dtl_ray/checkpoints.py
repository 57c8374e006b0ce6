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

__all__ = ["FORMAT", "save", "load", "save_dir", "load_dir", "load_weights", "CheckpointError"]

FORMAT = "dtl-ray/1"
FILE = "model.pt"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint."""


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
    obj = _from_bytes(storage.read_bytes(uri), f"model.weights {uri}")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return "ours", obj["state"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "torchvision", obj
    raise CheckpointError(f"model.weights {uri} holds neither a dtl-ray checkpoint nor a "
                          "state_dict of tensors")
