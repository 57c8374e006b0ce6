"""Every worker of a dtl-ray job knows its own cluster (`dtl_ray.rayenv`)."""

import os

import pytest

pytestmark = pytest.mark.slow


def test_workers_and_their_detached_children_know_their_cluster(ray_session):
    """Ray Train's placement-group cleaner is a detached actor, started by a Train controller
    with its own env vars; the state API it calls must find this cluster, not the one the
    machine's /tmp/ray/ray_current_cluster names (another cluster, or none)."""
    ray = ray_session
    gcs = ray.get_runtime_context().gcs_address

    @ray.remote(num_cpus=0)
    class Child:
        def seen(self):
            from ray.util.state import get_actor

            me = ray.get_runtime_context().get_actor_id()
            return os.environ.get("RAY_ADDRESS"), os.environ.get("ONLY_HERE"), \
                get_actor(me, timeout=30).state

    @ray.remote(num_cpus=0)
    class Parent:
        def child(self):
            c = Child.options(lifetime="detached",
                              runtime_env={"env_vars": {"ONLY_HERE": "1"}}).remote()
            try:
                return ray.get(c.seen.remote())
            finally:
                ray.kill(c)

    @ray.remote(num_cpus=0)
    def task():
        return os.environ.get("RAY_ADDRESS")

    assert ray.get(task.remote()) == gcs
    assert ray.get(Parent.remote().child.remote()) == (gcs, "1", "ALIVE")


def test_auto_workers_take_the_cluster_but_a_cpu_for_reading(ray_session, capsys):
    """`scaling.num_workers: auto` on the session's cluster (2 CPUs, no GPU, no autoscaler):
    the CPUs but one over `cpus_per_worker`; with GPUs asked, every GPU (none here: one
    worker, which the GPU check then refuses); a number is left alone."""
    from dataclasses import replace

    from dtl_ray import config
    from dtl_ray.errors import ConfigError
    from dtl_ray.pipeline import preflight

    cfg = config.load_config(overrides=["source.uri=s", "target.uri=t",
                                         "scaling.num_workers=auto"])
    assert cfg.scaling.num_workers == "auto"
    assert preflight.workers(cfg).scaling.num_workers == 1
    assert "auto: 1 Train worker(s) (2 CPUs" in capsys.readouterr().out
    gpu = replace(cfg, scaling=replace(cfg.scaling, use_gpu=True))
    assert preflight.workers(gpu).scaling.num_workers == 1
    fixed = replace(cfg, scaling=replace(cfg.scaling, num_workers=3))
    assert preflight.workers(fixed) is fixed
    for bad in ("autox", 0):
        with pytest.raises(ConfigError, match="scaling.num_workers"):
            config.load_config(overrides=["source.uri=s", "target.uri=t",
                                          f"scaling.num_workers={bad}"])
