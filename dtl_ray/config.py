"""Pipeline configuration: one frozen dataclass per stage, YAML loading, dotted overrides.

Every field has a docstring; unknown keys and wrong types raise `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

__all__ = [
    "ConfigError", "S3Config", "DomainConfig", "ModelConfig", "ScalingConfig", "DataConfig",
    "PretrainConfig", "DiscriminateConfig", "ScoreConfig", "SelectConfig",
    "FinetuneConfig", "PipelineConfig", "load_config", "from_dict", "to_dict", "apply_overrides",
]


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message names the key."""


@dataclass(frozen=True)
class DomainConfig:
    uri: str = ""
    """Dataset root: a local folder or `s3://bucket/prefix` in the layout of METHOD.md."""


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = None
    """S3-compatible endpoint (e.g. http://127.0.0.1:9000); else AWS_ENDPOINT_URL or AWS's own."""
    region: str | None = None
    """Region; else AWS_REGION. Credentials always come from the AWS chain, never the config."""


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"
    """`smallcnn` (for tiny images) or any torchvision classification model name."""
    image_size: int = 224
    """Images are resized to image_size x image_size pixels."""
    weights: str | None = None
    """Optional local checkpoint to start pretraining from (a torchvision state_dict or ours)."""


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 1
    """Ray Train workers for pretrain and discriminate (data parallel)."""
    use_gpu: bool = False
    """Train, score and fine-tune on GPUs."""
    cpus_per_worker: int = 1
    """CPUs reserved by each training worker, scoring actor and tuning trial."""
    max_failures: int = 3
    """Restarts of a Train worker group or a Tune trial after a worker dies (each resumes
    from its last checkpoint)."""


@dataclass(frozen=True)
class DataConfig:
    batch_size: int = 64
    """Training batch size per worker."""
    cache: Literal["auto", "always", "never"] = "auto"
    """Keep decoded training images in Ray's object store: `auto` does when they fit in 1/4."""
    shuffle_buffer: int = 8
    """Local shuffle buffer of the training stages, in batches (0: none). Training rows are
    also permuted with the run's seed before blocks are cut, and the block order is re-drawn
    every epoch, so no batch sees the manifest's class-sorted order."""
    max_rejected_fraction: float = 0.01
    """The run stops before training when more images than this cannot be decoded."""
    extensions: list[str] = field(
        default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"])
    """File name endings treated as images."""


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 10
    """Epochs over source train."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    rotation: float = 15.0
    """Random rotation, degrees (augmentation)."""
    crop: float = 0.125
    """Random translation as a fraction of the image side (random-crop augmentation)."""
    flip: bool = True
    """Random horizontal flip (augmentation)."""
    brightness: float = 0.2
    """Random brightness factor range +- (augmentation)."""
    contrast: float = 0.2
    """Random contrast factor range +- (augmentation)."""


@dataclass(frozen=True)
class DiscriminateConfig:
    layer: str | None = None
    """Backbone node to tap (torchvision feature-extraction name); None: pooled penultimate."""
    hidden: int = 256
    """Hidden width of the MLP discriminator."""
    epochs: int = 30
    """Epochs over the (precomputed) features."""
    lr: float = 1e-3
    """Adam learning rate of the discriminator."""
    heldout_fraction: float = 0.2
    """Part of both domains held out to report accuracy, AUC and proxy A-distance."""
    balanced: bool = True
    """Class-balanced loss (each domain weighs half). Then N_s/N_t in the weights is 1."""
    mode: Literal["standard", "adversarial"] = "standard"
    """`adversarial`: first adapt g with a gradient reversal layer against a domain head while
    keeping the source classification loss (DANN); D is then trained on the adapted features,
    scoring uses the adapted model, and it is evaluated as the `dann` row."""
    dann_baseline: bool = False
    """Also adapt g with DANN in standard mode, only to evaluate it as the `dann` row and report
    the domain gap before and after (scoring keeps the pretrained features)."""
    dann_epochs: int = 8
    """Adversarial mode: epochs over source train."""
    dann_lr: float = 1e-3
    """Adversarial mode: AdamW learning rate of g, h and the domain head."""
    dann_weight: float = 1.0
    """Adversarial mode: the most the reversed domain loss counts (DANN's schedule ramps it)."""


@dataclass(frozen=True)
class ScoreConfig:
    weighting: Literal["density_ratio", "iwan", "iwc"] = "density_ratio"
    """Importance weights from p = P(target|x): `density_ratio` p/(1-p)*N_s/N_t (Bickel et
    al.), `iwan` 1 - P(source|x) normalised to mean 1 over source train (Zhang et al.), `iwc`
    1/P(source|x) - 1 (ADAPT's IWC; equals density_ratio with a balanced discriminator)."""
    batch_size: int = 256
    """Images per scoring batch."""
    actors: int = 0
    """Scoring actors; 0 sizes the pool from the cluster's resources."""
    clip: float = 0.01
    """p_target is clipped to [clip, 1 - clip] before forming weights."""
    max_weight: float = 20.0
    """Importance weights are capped here; the report counts how many were."""


@dataclass(frozen=True)
class SelectConfig:
    rule: Literal["top_fraction", "threshold", "per_class"] = "top_fraction"
    """How source candidates are chosen by weight."""
    fraction: float = 0.25
    """`top_fraction`: part of source train (in shared classes) to take."""
    threshold: float = 1.0
    """`threshold`: take source samples with weight at least this."""
    per_class: int = 100
    """`per_class`: at most this many source samples per target class."""
    target_fraction: float = 0.3
    """Part of the unlabeled target pool to pseudo-label."""
    confidence_floor: float = 0.6
    """Target candidates need at least this model confidence."""


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 15
    """Most epochs a trial runs (ASHA's max_t)."""
    grace_period: int = 5
    """Epochs before ASHA may stop a trial."""
    num_samples: int = 1
    """Random draws of (lr, layers, weights) per (strategy, fraction) cell."""
    source_fractions: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5])
    """Source-pool fractions searched for `discriminator` and `random` (0 and 1 always run)."""
    target_fractions: list[float] = field(default_factory=lambda: [0.0, 0.3])
    """Unlabeled-target fractions searched (pseudo-labeled by the teacher)."""
    strategies: list[str] = field(default_factory=lambda: ["discriminator", "random"])
    """Selection strategies searched; baselines are added automatically."""
    lr: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    """Learning rates to sample from."""
    init: Literal["pretrain", "adapted"] = "pretrain"
    """The backbone fine-tuning starts from: the pretrained one, or the adversarially adapted
    one (needs discriminate.mode: adversarial)."""
    train_layers: list[str] = field(default_factory=lambda: ["all", "last_block"])
    """Which layers train: `head`, `last_block`, `all`."""
    candidate_weight: list[float] = field(default_factory=lambda: [1.0])
    """Loss weight of candidate samples relative to labeled target."""
    weight_by_w: bool = False
    """Multiply source-candidate losses by their (mean-normalised) importance weight."""
    label_free: Literal["dev", "iwcv"] = "dev"
    """Label-free model choice (reported beside the target-val choice): the trial and epoch
    with the lowest DEV (You et al. 2019) or IWCV risk on weighted source val."""
    mix_ratio: float = 0.25
    """Labeled target is oversampled to at least this share of every epoch."""
    batch_size: int = 64
    """Fine-tuning batch size."""
    max_concurrent_trials: int = 0
    """0 sizes concurrency from the cluster's resources."""


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "run"
    """Run name: outputs go to <storage>/<name>/."""
    seed: int = 0
    """Seed for every random choice (data order, init, random subsets, demo data)."""
    storage: str = "runs"
    """Output root: a local folder or s3://bucket/prefix."""
    s3: S3Config = field(default_factory=S3Config)
    """S3 endpoint and region (no secrets)."""
    source: DomainConfig = field(default_factory=DomainConfig)
    """The labeled source domain."""
    target: DomainConfig = field(default_factory=DomainConfig)
    """The target domain."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Backbone and input size."""
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    """Workers and devices."""
    data: DataConfig = field(default_factory=DataConfig)
    """Reading and batching."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Stage 1."""
    discriminate: DiscriminateConfig = field(default_factory=DiscriminateConfig)
    """Stage 2."""
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """Stage 3."""
    select: SelectConfig = field(default_factory=SelectConfig)
    """Stage 4."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Stage 5."""


def _check_value(key: str, tp: Any, value: Any) -> Any:
    """Returns `value` converted to type `tp`, or raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(key, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_check_value(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Builds dataclass `cls` from a dict, validating keys and types.

    Raises:
        ConfigError: for an unknown key (with the closest known one) or a wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _check_value(f"{prefix}{key}", hints[key], value)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """The config as plain data (YAML/JSON-able)."""
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies `dotted.key=value` overrides (values parsed as YAML) to a nested dict."""
    data = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def adapts(cfg: PipelineConfig) -> bool:
    """Whether the discriminate stage trains a DANN-adapted backbone."""
    return cfg.discriminate.mode == "adversarial" or cfg.discriminate.dann_baseline


def _validate(cfg: PipelineConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    if not cfg.source.uri:
        raise ConfigError("config key 'source.uri' is required")
    if not cfg.target.uri:
        raise ConfigError("config key 'target.uri' is required")
    checks = [
        ("model.image_size", cfg.model.image_size >= 8),
        ("scaling.num_workers", cfg.scaling.num_workers >= 1),
        ("scaling.cpus_per_worker", cfg.scaling.cpus_per_worker >= 1),
        ("scaling.max_failures", cfg.scaling.max_failures >= 0),
        ("data.max_rejected_fraction", 0 <= cfg.data.max_rejected_fraction <= 1),
        ("data.batch_size", cfg.data.batch_size >= 1),
        ("data.shuffle_buffer", cfg.data.shuffle_buffer >= 0),
        ("pretrain.epochs", cfg.pretrain.epochs >= 1),
        ("discriminate.epochs", cfg.discriminate.epochs >= 1),
        ("discriminate.heldout_fraction", 0 < cfg.discriminate.heldout_fraction < 1),
        ("score.clip", 0 < cfg.score.clip < 0.5),
        ("score.max_weight", cfg.score.max_weight > 0),
        ("select.fraction", 0 <= cfg.select.fraction <= 1),
        ("select.target_fraction", 0 <= cfg.select.target_fraction <= 1),
        ("finetune.epochs", cfg.finetune.epochs >= 1),
        ("finetune.num_samples", cfg.finetune.num_samples >= 1),
        ("finetune.source_fractions", all(0 < f < 1 for f in cfg.finetune.source_fractions)),
        ("finetune.target_fractions", all(0 <= f <= 1 for f in cfg.finetune.target_fractions)),
        ("finetune.lr", len(cfg.finetune.lr) > 0 and all(v > 0 for v in cfg.finetune.lr)),
        ("finetune.mix_ratio", 0 <= cfg.finetune.mix_ratio < 1),
        ("discriminate.dann_epochs", cfg.discriminate.dann_epochs >= 1),
        ("discriminate.dann_lr", cfg.discriminate.dann_lr > 0),
        ("discriminate.dann_weight", cfg.discriminate.dann_weight >= 0),
    ]
    for key, ok in checks:
        if not ok:
            value = cfg
            for part in key.split("."):
                value = getattr(value, part)
            raise ConfigError(f"config key '{key}': value {value!r} is out of range")
    for s in cfg.finetune.strategies:
        if s not in ("discriminator", "random"):
            raise ConfigError(f"config key 'finetune.strategies': unknown strategy {s!r} "
                              "(choose from 'discriminator', 'random')")
    for layers in cfg.finetune.train_layers:
        if layers not in ("head", "last_block", "all"):
            raise ConfigError(f"config key 'finetune.train_layers': unknown value {layers!r} "
                              "(choose from 'head', 'last_block', 'all')")
    if cfg.finetune.init == "adapted" and not adapts(cfg):
        raise ConfigError("config key 'finetune.init': 'adapted' needs "
                          "discriminate.mode: adversarial or discriminate.dann_baseline: true "
                          "(there is no adapted backbone otherwise)")
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"config key 'name': {cfg.name!r} must be a non-empty name without '/'")


def load_config(path: str | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> PipelineConfig:
    """Reads a YAML config (or `base`), applies overrides, validates.

    Raises:
        ConfigError: for a missing file, bad YAML, unknown key, wrong type or bad value.
    """
    data = dict(base or {})
    if path is not None:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    cfg = from_dict(PipelineConfig, data)
    _validate(cfg)
    return cfg
