"""Stage settings: the values of the config keys each stage's outputs depend on (its record's
`fingerprint`), recorded in its done marker.

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
from dtl_ray.contract import registry
from dtl_ray.errors import ConfigError

__all__ = ["settings", "changes", "flat", "check"]


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
    upto = registry.NAMES.index(registry.stage(stage).name) + 1
    keys = [k for s in registry.STAGES[:upto] for k in s.fingerprint]
    return {f: v for f, v in values.items()
            if any(f == k or f.startswith(k + ".") for k in keys)}


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every key whose value differs."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def check(cfg: PipelineConfig, layout) -> None:
    """Refuses to reuse a finished stage of `layout`'s run made with other settings.

    Raises:
        ConfigError: naming the stage, the changed keys and `--restart-from`.
    """
    for name in layout.finished():
        old = layout.settings(name)
        if old is None:  # a marker from before settings were recorded: nothing to compare
            continue
        changed = changes(old, settings(cfg, name))
        if changed:
            shown = "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")
            raise ConfigError(f"stage '{name}' of run {layout.root} finished with other "
                              f"settings ({shown}): run with --restart-from {name} to make it "
                              "and every later stage again, or choose another name")
