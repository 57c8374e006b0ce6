"""The sample vocabulary every reader shares: the column names, the splits of each domain,
stable sample ids and the size an image is brought to.

Decoding images is `decode`; listing them `manifests`; reading them with Ray Data `readers`.
"""

from __future__ import annotations

__all__ = ["SAMPLE_ID", "IMAGE", "LABEL", "DOMAIN", "SPLIT", "PATH", "ERROR", "P_TARGET",
           "WEIGHT", "COLUMNS", "SPLITS", "REQUIRED", "UNLABELED", "sample_id", "Size", "side"]

# the one column vocabulary
SAMPLE_ID, IMAGE, LABEL, DOMAIN, SPLIT, PATH, ERROR = (
    "sample_id", "image", "label", "domain", "split", "path", "error")


P_TARGET, WEIGHT = "p_target", "weight"


COLUMNS = [SAMPLE_ID, IMAGE, LABEL, DOMAIN, SPLIT, PATH, ERROR, P_TARGET, WEIGHT]


SPLITS = {"source": ["train", "val"], "target": ["train", "unlabeled", "val", "test"]}


REQUIRED = {("source", "train"), ("source", "val"), ("target", "train"), ("target", "val")}
"""Without target test a run measures its models on target val instead, and says so."""


UNLABELED = -1


def sample_id(domain: str, split: str, rel_path: str) -> str:
    """The stable id of a sample: its domain, split and path below the split folder."""
    return f"{domain}/{split}/{rel_path}"


Size = int | tuple[int, int]
"""How an image is brought to the model's input: `S` resizes it straight to S x S; `(S, R)`
resizes its shorter side to R and crops the centre S x S (torchvision's `Resize(R)` and
`CenterCrop(S)`, the eval transform of its weights)."""


def side(size: Size) -> int:
    """The side S of the decoded image."""
    return size if isinstance(size, int) else int(size[0])
