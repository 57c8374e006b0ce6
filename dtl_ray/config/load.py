"""Reading a config: YAML, dotted overrides, type checks that name the key, range checks."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

import yaml

from dtl_ray.config.schema import ConfigError, PipelineConfig


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
    return cfg.discriminate.adapts


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
