"""Backbones by name, the classifier, the intermediate-layer tap and the domain discriminator.

Plain PyTorch: no Ray here.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from dtl_ray.errors import ModelError

# torchvision is imported where it is needed: it costs about 1.3 s per process, which every
# scoring actor, Train worker and Tune trial would pay even for `smallcnn`.

__all__ = ["SmallCNN", "Classifier", "build_backbone", "build_classifier", "set_trainable",
           "is_weights_name", "named_weights"]



def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """A small VGG-style CNN for tiny images; returns pooled 64-d features."""

    out_features = 64

    def __init__(self) -> None:
        super().__init__()
        self.block1 = _block(3, 16)
        self.block2 = _block(16, 32)
        self.block3 = _block(32, 64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, H, W)
        x = self.block3(self.block2(self.block1(x)))  # (B, 64, H/8, W/8)
        return self.flatten(self.pool(x))  # (B, 64)


def _strip_last_linear(model: nn.Module) -> int:
    """Replaces the model's last nn.Linear (its classifier) by Identity; returns in_features."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ModelError("backbone has no final nn.Linear classifier to replace")
    parent = model
    *path, leaf = last.split(".")
    for p in path:
        parent = getattr(parent, p)
    in_features = getattr(parent, leaf).in_features
    setattr(parent, leaf, nn.Identity())
    return in_features


def build_backbone(name: str, weights: dict | None = None) -> tuple[nn.Module, int]:
    """Returns (backbone g producing pooled features, feature width).

    Args:
        name: `smallcnn` or a torchvision classification model name (`resnet18`, ...).
        weights: optional state_dict of the *full* torchvision model (as torchvision saves it).
    """
    if name == "smallcnn":
        g = SmallCNN()
        if weights is not None:
            g.load_state_dict(weights)
        return g, SmallCNN.out_features
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(f"unknown backbone {name!r}: use 'smallcnn' or a torchvision "
                         "classification model name such as 'resnet18'")
    model = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise ModelError(f"model.weights do not fit {name}: {str(e).splitlines()[0]}") from None
    if getattr(model, "aux_logits", False):  # inception_v3, googlenet: in train mode they
        model.aux_logits = False  # return (logits, aux) tuples; the auxiliary heads are
        for aux in ("AuxLogits", "aux1", "aux2"):  # only a training aid, dropped here
            if hasattr(model, aux):
                setattr(model, aux, None)
    return model, _strip_last_linear(model)


WEIGHTS_NAME = re.compile(r"(?:[A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*")
"""A torchvision weights name: `IMAGENET1K_V1`, `DEFAULT`, or `ResNet18_Weights.IMAGENET1K_V1`
(a file name would have a suffix or a folder)."""

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def is_weights_name(value: str | None) -> bool:
    return bool(value) and WEIGHTS_NAME.fullmatch(value) is not None


def named_weights(backbone: str, name: str):
    """torchvision's weights `name` for `backbone` (a member of its weights enum), resolved
    with torchvision's weights API; nothing is downloaded here.

    Raises:
        ModelError: a backbone without torchvision weights, a name it does not have, or
            weights that normalise with statistics other than ImageNet's (the only ones every
            stage applies: 113 of torchvision 0.29's 115 classification weights).
    """
    import torchvision

    if backbone == "smallcnn":
        raise ModelError(f"model.weights {name!r} is a torchvision weights name, but "
                         "model.backbone smallcnn has none: give a file, or a torchvision "
                         "backbone")
    enum = torchvision.models.get_model_weights(backbone)
    prefix, _, short = name.rpartition(".")
    if prefix and prefix != enum.__name__:
        raise ModelError(f"model.weights {name!r} are not {backbone}'s: its weights are "
                         f"{enum.__name__} ({', '.join(enum.__members__)})")
    if short not in enum.__members__:
        raise ModelError(f"model.weights {name!r} is not a weights name of {backbone}: choose "
                         f"from {', '.join(enum.__members__)} (or give a file)")
    weights = enum[short]
    t = weights.transforms()
    mean, std = tuple(getattr(t, "mean", IMAGENET_MEAN)), tuple(getattr(t, "std", IMAGENET_STD))
    if (any(abs(a - b) > 1e-3 for a, b in zip(mean, IMAGENET_MEAN))
            or any(abs(a - b) > 1e-3 for a, b in zip(std, IMAGENET_STD))):
        raise ModelError(f"model.weights {weights} normalise with mean {list(mean)}, std "
                         f"{list(std)}; every stage normalises with ImageNet's "
                         f"({list(IMAGENET_MEAN)}, {list(IMAGENET_STD)}): not supported yet")
    return weights


class Classifier(nn.Module):
    """Backbone g followed by a linear head h."""

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, num_classes)


def build_classifier(name: str, num_classes: int, weights: dict | None = None) -> Classifier:
    g, dim = build_backbone(name, weights)
    return Classifier(g, dim, num_classes)


def set_trainable(model: Classifier, layers: str) -> None:
    """Freezes all but `layers`: 'head', 'last_block' (last parametrised backbone child) or 'all'.

    Frozen BatchNorm layers are put in eval mode by `loops.train_mode`.
    """
    if layers not in ("head", "last_block", "all"):
        raise ModelError(f"unknown train_layers {layers!r}")
    for p in model.parameters():
        p.requires_grad = layers == "all"
    for p in model.head.parameters():
        p.requires_grad = True
    if layers == "last_block":
        children = [m for m in model.backbone.children() if any(True for _ in m.parameters())]
        for p in children[-1].parameters():
            p.requires_grad = True
