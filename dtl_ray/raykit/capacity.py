"""What the cluster can hold: its nodes now and the nodes its autoscaler may add.

Sizing work from a snapshot of `ray.cluster_resources()` freezes a cluster that starts with
zero workers: it asks for what is there (nothing) and the autoscaler never sees demand. These
helpers add the autoscaler's node types where Ray publishes them (autoscaler v2, KubeRay), and
say "unknown" for an autoscaler whose limits Ray does not publish (the v1 autoscaler of the
cluster launcher): then nothing is refused and pools are left to grow.

Ray keeps this in private state (`ray._private.state`, the monitor's status in the GCS key
value store); every read falls back to "no autoscaler" when a Ray version lacks it.
"""

from __future__ import annotations

import json

__all__ = ["autoscaler_max", "most", "node_shapes", "fits"]


def _cluster_config():
    """The autoscaler's cluster config as Ray publishes it (v2, KubeRay), or None."""
    try:
        from ray._private.state import state

        return state.get_cluster_config()
    except Exception:  # noqa: BLE001 (a Ray without it)
        return None


def _has_autoscaler() -> bool:
    """Whether an autoscaler with node types of its own runs: the monitor reports node types
    that are not the read-only provider's one-type-per-node names (`node_<node id>`, a cluster
    without an autoscaler)."""
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    except Exception:  # noqa: BLE001 (a Ray without it: no autoscaler known)
        return False
    mapping = report.get("node_type_mapping") or {}
    return any(kind != f"node_{node}" for node, kind in mapping.items())


def autoscaler_max() -> dict | None:
    """The resources of the autoscaler's node types at their maximum counts; {} when the
    cluster has no autoscaler (it is what it is now); None for an autoscaler whose limits
    Ray does not publish."""
    try:
        from ray._private.state import state

        published = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 (a Ray without it)
        published = None
    if published:
        return dict(published)
    return None if _has_autoscaler() else {}


def most(resource: str) -> int | None:
    """The most of `resource` ("CPU", "GPU") the cluster can hold: its nodes' total now, or
    what the autoscaler's node types add up to when that is larger; None when an autoscaler
    may add nodes without saying how many."""
    import ray

    grow = autoscaler_max()
    if grow is None:
        return None
    return int(max(ray.cluster_resources().get(resource, 0), grow.get(resource, 0)))


def node_shapes() -> list[dict]:
    """Each kind of node's resources: the live nodes and the autoscaler's published types."""
    import ray

    shapes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    for group in getattr(_cluster_config(), "node_group_configs", None) or []:
        shapes.append({k: float(v) for k, v in dict(group.resources).items()})
    return shapes


def fits(request: dict) -> bool:
    """Whether one node (live, or one the autoscaler can add) can hold `request` at once (a
    request no node can hold waits forever); True when an autoscaler may add nodes of types
    Ray does not publish."""
    need = {k: v for k, v in request.items() if v}
    if any(all(shape.get(k, 0) >= v for k, v in need.items()) for shape in node_shapes()):
        return True
    return autoscaler_max() is None
