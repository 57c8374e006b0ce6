"""Joining a Ray cluster (or starting a local one), and what every worker of the job starts with.

Ray Train's `PlacementGroupCleaner` (a detached actor that removes a Train run's placement
group when its controller dies without cleaning up, as a controller does when Tune stops the
trial that owns it) asks Ray's state API whether the controller is alive. Inside a worker
that API finds its cluster through `RAY_ADDRESS`, else through the machine's
`/tmp/ray/ray_current_cluster`, which names the last cluster `ray start` made on that machine:
another cluster, or one long gone. Then the cleaner's thread dies ("Timed out while waiting
for GCS to become available"), the placement group stays, and its GPUs and CPUs are held
until the driver ends: the next trials wait for them forever (seen as trials on TorchTrainers
stalling after their first epoch on the simulated cluster). Every worker of a dtl-ray job
therefore has `RAY_ADDRESS` set to its own cluster (`pin_ray_address`, a worker setup hook
that child actors inherit, detached ones included).
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["ensure_ray", "runtime_env", "pin_ray_address"]


def ensure_ray(env: dict[str, str] | None = None) -> None:
    """Connects to RAY_ADDRESS if set, else starts a local Ray (dashboard on 127.0.0.1).

    `env` (S3 endpoint and region, never secrets) reaches every worker of this job, and every
    worker knows its own cluster's address (`pin_ray_address`).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {} if address else {"dashboard_host": "127.0.0.1"}
    kwargs["runtime_env"] = runtime_env(env)
    # "local": never attach by accident to another cluster started on this machine
    ray.init(address=address or "local", logging_level=logging.WARNING, **kwargs)


def pin_ray_address() -> None:
    """In a worker process: `RAY_ADDRESS` is the cluster this worker belongs to."""
    import os

    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def runtime_env(env_vars: dict[str, str] | None = None) -> dict:
    """The job's runtime environment: the setup hook, and `env_vars` for every worker.

    The hook travels by value (a worker runs it before anything imports dtl_ray, and a
    worker whose hook fails to import dies)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out: dict = {"worker_process_setup_hook": pin_ray_address}
    if env_vars:
        out["env_vars"] = dict(env_vars)
    return out
