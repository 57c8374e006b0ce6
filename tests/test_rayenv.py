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
