"""Reading a config: YAML, dotted overrides, type checks that name the key, range checks."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal

import yaml

from dtl_ray.config.schema import PipelineConfig
from dtl_ray.errors import ConfigError

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SCHEMES = ("s3://", "file://")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


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
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string; YAML 1.2 does not
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
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
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML "
                              f"({_one_line(e)}); quote a string value") from None
        if "#" in raw and isinstance(value, str | None):
            value = raw.strip()  # a '#' in a path or name, not a YAML comment
        node[parts[-1]] = value
    return data


def adapts(cfg: PipelineConfig) -> bool:
    """Whether the discriminate stage trains a DANN-adapted backbone."""
    return cfg.discriminate.adapts


def _at_least(lo: float):
    return (lambda v: v >= lo), f">= {lo}"


def _above(lo: float):
    return (lambda v: v > lo), f"> {lo}"


def _within(lo: float, hi: float, open_lo: bool = False, open_hi: bool = False):
    def ok(v):
        return (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)

    return ok, f"{'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"


# every numeric key's range (lists: each item); checked at load time, so nothing fails hours in
RANGES = {
    "seed": _at_least(0),
    "model.image_size": _within(8, 4096),
    "scaling.num_workers": ((lambda v: v == "auto" or v >= 1), ">= 1, or auto"),
    "scaling.cpus_per_worker": _at_least(1),
    "scaling.max_failures": _at_least(0),
    "data.batch_size": _at_least(1),
    "data.shuffle_buffer": _at_least(0),
    "data.max_rejected_fraction": _within(0, 1),
    "data.max_image_pixels": _at_least(1),
    "pretrain.epochs": _at_least(1),
    "pretrain.lr": _above(0),
    "pretrain.weight_decay": _at_least(0),
    "pretrain.rotation": _within(0, 180),
    "pretrain.crop": _within(0, 0.5, open_hi=True),
    "pretrain.brightness": _within(0, 1, open_hi=True),
    "pretrain.contrast": _within(0, 1, open_hi=True),
    "discriminate.hidden": _at_least(1),
    "discriminate.epochs": _at_least(1),
    "discriminate.folds": _at_least(1),
    "discriminate.batch_size": _at_least(0),
    "discriminate.clusters": _at_least(0),
    "discriminate.lr": _above(0),
    "discriminate.heldout_fraction": _within(0, 1, open_lo=True, open_hi=True),
    "discriminate.dann_epochs": _at_least(1),
    "discriminate.dann_lr": _above(0),
    "discriminate.dann_weight": _at_least(0),
    "score.batch_size": _at_least(1),
    "score.actors": _at_least(0),
    "score.clip": _within(0, 0.5, open_lo=True, open_hi=True),
    "score.max_weight": _above(0),
    "select.fraction": _within(0, 1),
    "select.threshold": _at_least(0),
    "select.per_class": _at_least(1),
    "select.target_fraction": _within(0, 1),
    "select.confidence_floor": _within(0, 1),
    "finetune.epochs": _at_least(1),
    "finetune.grace_period": _at_least(1),
    "finetune.num_samples": _at_least(1),
    "finetune.source_fractions": _within(0, 1, open_lo=True, open_hi=True),
    "finetune.target_fractions": _within(0, 1),
    "finetune.lr": _above(0),
    "finetune.candidate_weight": _at_least(0),
    "finetune.weight_alphas": _within(0, 4),
    "finetune.source_val_samples": _at_least(0),
    # at 0.9 labeled target is repeated up to 9x the candidates per epoch; beyond, epochs grow
    # without bound (0.999: a thousand copies)
    "finetune.mix_ratio": _within(0, 0.9),
    "finetune.batch_size": _at_least(1),
    "finetune.min_epoch_samples": _at_least(0),
    "finetune.max_epoch_samples": _at_least(1),
    "finetune.max_concurrent_trials": _at_least(0),
    "finetune.workers_per_trial": _at_least(0),
    "finetune.teacher_workers": _at_least(0),
    "finetune.gpus_per_worker": _within(0, 1, open_lo=True),
    "finetune.in_memory_mb": _at_least(0),
    "finetune.consistency_weight": _at_least(0),
    "finetune.consistency_threshold": _within(0, 1),
    "finetune.unlabeled_ratio": _at_least(1),
}

MAY_BE_EMPTY = {"finetune.weight_alphas"}
"""List keys where [] is valid (it turns the feature off)."""


def _validate(cfg: PipelineConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    if not cfg.source.uri:
        raise ConfigError("config key 'source.uri' is required")
    if not cfg.target.uri:
        raise ConfigError("config key 'target.uri' is required")
    for key, (ok, expected) in RANGES.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if isinstance(value, list):
            empty_ok = key in MAY_BE_EMPTY
            good = (empty_ok or len(value) > 0) and all(ok(v) for v in value)
            expected = f"a {'' if empty_ok else 'non-empty '}list, each item {expected}"
        else:
            good = ok(value)
        if not good:
            raise ConfigError(f"config key '{key}': {value!r} is out of range (expected "
                              f"{expected})")
    resize = cfg.model.resize_size
    if resize is not None and not cfg.model.image_size <= resize <= 8192:
        raise ConfigError(f"config key 'model.resize_size': {resize!r} is out of range "
                          f"(expected [model.image_size={cfg.model.image_size}, 8192], or null)")
    for s in cfg.finetune.strategies:
        if s not in ("discriminator", "random"):
            raise ConfigError(f"config key 'finetune.strategies': unknown strategy {s!r} "
                              "(choose from 'discriminator', 'random')")
    if not cfg.finetune.train_layers:
        raise ConfigError("config key 'finetune.train_layers': [] is empty (choose from "
                          "'head', 'last_block', 'all')")
    if not cfg.finetune.strategies:
        raise ConfigError("config key 'finetune.strategies': [] is empty (choose from "
                          "'discriminator', 'random')")
    for layers in cfg.finetune.train_layers:
        if layers not in ("head", "last_block", "all"):
            raise ConfigError(f"config key 'finetune.train_layers': unknown value {layers!r} "
                              "(choose from 'head', 'last_block', 'all')")
    if cfg.finetune.init == "adapted" and not adapts(cfg):
        raise ConfigError("config key 'finetune.init': 'adapted' needs "
                          "discriminate.mode: adversarial or discriminate.dann_baseline: true "
                          "(there is no adapted backbone otherwise)")
    if not _NAME.fullmatch(cfg.name) or cfg.name in (".", ".."):
        raise ConfigError(f"config key 'name': {cfg.name!r} must be letters, digits, '.', '_' "
                          "or '-' (not starting with '.' or '-'): it names a folder in storage")
    for key in ("storage", "source.uri", "target.uri", "model.weights"):
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value and "://" in value and not value.startswith(SCHEMES):
            raise ConfigError(f"config key '{key}': {value!r} has an unsupported scheme "
                              "(use a local path or s3://bucket/prefix)")


def load_config(path: str | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> PipelineConfig:
    """Reads a YAML config (or `base`), applies overrides, validates.

    Raises:
        ConfigError: for a missing file, bad YAML, unknown key, wrong type or bad value.
    """
    data = dict(base or {})
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"config path {path} is a folder, not a YAML file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte "
                              f"{e.start}); save it as UTF-8") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {_one_line(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    cfg = from_dict(PipelineConfig, data)
    _validate(cfg)
    return cfg
