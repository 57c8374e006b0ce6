"""Stage settings: the config keys each stage's outputs depend on, recorded in its done marker.

A re-run whose relevant settings differ from a finished stage's is refused (one line naming the
stage and the changed keys) instead of silently reusing outputs made with other settings;
`--restart-from STAGE` deletes that stage and every later one so they are made again.
Settings are cumulative: a stage depends on its own keys and on every earlier stage's.
Scaling keys (workers, GPUs, retries) and caching are left out: they change how a stage runs,
not what it means.
"""

from __future__ import annotations

from typing import Any

from dtl_ray.config import PipelineConfig, to_dict
from dtl_ray.contract.layout import STAGES

__all__ = ["DEPENDS", "settings", "changes", "flat"]

DEPENDS = {
    "pretrain": ["seed", "source.uri", "target.uri", "model", "data.extensions",
                 "data.batch_size", "data.shuffle_buffer", "pretrain"],
    "discriminate": ["discriminate"],
    "score": ["score"],
    "select": ["select"],
    "finetune": ["finetune"],
    "evaluate": [],
}
"""Each stage's own keys (a section or a dotted key)."""


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """The dotted keys and values `stage`'s outputs depend on (its own and every earlier
    stage's)."""
    values = flat(to_dict(cfg))
    keys = [k for s in STAGES[:STAGES.index(stage) + 1] for k in DEPENDS[s]]
    return {f: v for f, v in values.items()
            if any(f == k or f.startswith(k + ".") for k in keys)}


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every key whose value differs."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
