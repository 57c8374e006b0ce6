"""The domain side of the models (plain PyTorch, no Ray): the feature tap the discriminator
reads (one layer, or several depths), the domain discriminator, and DANN's gradient reversal.
"""

from __future__ import annotations

import torch
from torch import nn

from dtl_ray.errors import ModelError
from dtl_ray.method.models import Classifier

__all__ = ["STYLES", "FeatureTap", "tap_nodes", "Discriminator", "discriminator",
           "grad_reverse", "DANN", "dann_scale"]


def tap_nodes(backbone: nn.Module) -> list[str]:
    """Names of the backbone's nodes that `FeatureTap` accepts."""
    from torchvision.models.feature_extraction import get_graph_node_names

    return get_graph_node_names(backbone)[1]


STYLES = "styles"
"""`discriminate.layer` for features from several depths (`FeatureTap`)."""


def _stages(backbone: nn.Module, probe: int) -> list[str]:
    """The backbone's stages: among its children and grandchildren, in the order they run on
    a (1, 3, probe, probe) input, the last module that outputs each spatial resolution (a
    1 x 1 output is the global pool, not a stage). None for a backbone without spatial maps
    or one that takes no such input (a vision transformer)."""
    order: list[tuple[str, int]] = []
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, name=name: order.append((name, out.shape[-1]))
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 1 else None)
        for name, m in backbone.named_modules() if name and name.count(".") <= 1]
    was = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, probe, probe))
    except Exception:  # noqa: BLE001 (a model of one input size, e.g. a ViT: no stages)
        order.clear()
    finally:
        for h in hooks:
            h.remove()
        backbone.train(was)
    last: dict[int, str] = {}
    for name, res in order:
        last.pop(res, None)
        last[res] = name  # re-inserted: the dict keeps the order of each resolution's last
    return list(last.values())


class FeatureTap(nn.Module):
    """Features of backbone layer `layer` (None: the backbone's pooled output), as (B, D).

    Spatial maps (B, C, H, W) are average-pooled to (B, C). `layer="styles"`: features from
    several depths: the per-channel mean and standard deviation of every stage's map but the
    last (early maps carry the rendering: colour, stroke, texture; Huang and Belongie's AdaIN
    statistics) and the last stage's mean (the pooled penultimate, the content); for a
    backbone without stages (a vision transformer), the pooled output alone.
    """

    def __init__(self, backbone: nn.Module, layer: str | None = None,
                 probe: int = 128) -> None:
        super().__init__()
        self.stages: list[str] = []
        if layer == STYLES:
            self.body = backbone
            self.stages = _stages(backbone, probe)
        elif layer is None:
            self.body = backbone
        else:
            nodes = tap_nodes(backbone)
            # a module name (`layer3`) means the output of its last node
            if layer not in nodes and not any(n.startswith(layer + ".") for n in nodes):
                raise ModelError(f"discriminate.layer {layer!r} is not a node of the backbone; "
                                 f"some that are: {nodes[-12:]}")
            from torchvision.models.feature_extraction import create_feature_extractor

            self.body = create_feature_extractor(backbone, return_nodes={layer: "feat"})
        self.layer = layer

    def with_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the tap's features, the backbone's output) of one pass, for the default taps
        (None and `styles`): the scorer feeds both D and the head from it."""
        if self.layer == STYLES and self.stages:
            return self._styles(x, keep_output=True)
        if self.layer in (None, STYLES):  # (styles without stages: the pooled output)
            out = self.body(x)
            return out, out
        raise ValueError("with_output is for the pooled and the styles taps")

    def _styles(self, x: torch.Tensor, keep_output: bool = False):
        maps: dict[str, torch.Tensor] = {}
        modules = dict(self.body.named_modules())
        hooks = [modules[n].register_forward_hook(
            lambda _m, _i, out, n=n: maps.__setitem__(n, out)) for n in self.stages]
        try:
            out = self.body(x)
        finally:
            for h in hooks:
                h.remove()
        feats = []
        for i, n in enumerate(self.stages):
            m = maps[n].float()  # (B, C, H, W)
            feats.append(m.mean(dim=(2, 3)))  # (B, C)
            if i < len(self.stages) - 1:
                feats.append(m.flatten(2).std(dim=2, unbiased=False))  # (B, C)
        f = torch.cat(feats, 1)  # (B, sum of 2C, and C of the last)
        return (f, out) if keep_output else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == STYLES and self.stages:
            return self._styles(x)
        out = self.body(x)
        if isinstance(out, dict):
            out = out["feat"]
        if out.dim() == 4:
            out = out.mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        return out.flatten(1)


class _GradReverse(torch.autograd.Function):
    """Identity forward; the gradient times -scale backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The gradient reversal layer: features pass unchanged, their gradient flips sign (and is
    scaled), so minimising the domain loss through it trains the features to *fool* D."""
    return _GradReverse.apply(x, scale)


class DANN(nn.Module):
    """A classifier and a domain head behind a gradient reversal layer, in one module (so that
    DistributedDataParallel sees one forward and syncs every gradient)."""

    def __init__(self, classifier: Classifier, domain: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.domain = domain

    def forward(self, x: torch.Tensor, n_source: int, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: source then target images; returns (source class logits, domain logits)."""
        f = self.classifier.backbone(x)  # (B, D)
        return self.classifier.head(f[:n_source]), self.domain(grad_reverse(f, scale))


def dann_scale(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule for the reversal strength: 2/(1+exp(-gamma p)) - 1, p in [0, 1]."""
    import math

    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class Discriminator(nn.Module):
    """MLP domain discriminator: features (B, D) -> logit of P(target) (B,).

    norm: the features are standardised first, by the mean and standard deviation of its
    training features (`fit_scale`, kept in its state), so that features of several depths,
    whose scales differ by orders of magnitude, count alike.
    """

    def __init__(self, in_dim: int, hidden: int = 256, norm: bool = False) -> None:
        super().__init__()
        if norm:
            self.register_buffer("shift", torch.zeros(in_dim))
            self.register_buffer("scale", torch.ones(in_dim))
        self.norm = norm
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @torch.no_grad()
    def fit_scale(self, f: torch.Tensor) -> None:
        """Standardise by the features f (N, D) it will train on (with `norm`)."""
        if self.norm and len(f) > 1:
            self.shift.copy_(f.mean(0))
            self.scale.copy_(f.std(0).clamp_min(1e-6))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.norm:
            f = (f - self.shift) / self.scale  # (B, D)
        return self.net(f).squeeze(1)


def discriminator(layer: str | None, in_dim: int, hidden: int) -> Discriminator:
    """The discriminator of the features of `layer` (standardised for several depths)."""
    return Discriminator(in_dim, hidden, norm=layer == STYLES)
