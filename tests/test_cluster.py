"""A simulated autoscaling GPU cluster: a real head (`ray start --head`) whose autoscaler adds
worker nodes through Ray's fake multi-node provider (each a real raylet on this machine) that
declare one logical GPU each. The head has no CPUs; a CPU node is always there; GPU nodes start
at zero and are added only for pending GPU requests, then removed when idle."""

import json
import os
import subprocess
import sys
import threading

import pandas as pd
import pytest
from conftest import CONSISTENCY, SMALL_SEARCH, cli_args, free_port, ray_head, tiny_overrides
from faults import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
BIN = os.path.dirname(sys.executable)
MB = 1_000_000


def cluster_config(gcs_address: str) -> dict:
    """The autoscaler's cluster config: the head (no CPU: nothing runs there but drivers), one
    CPU node always up, up to two GPU nodes (2 CPUs and 1 GPU each), idle nodes removed after
    about 6 s."""
    def node(cpus, gpus, lo, hi):
        return {"resources": {"CPU": cpus, "GPU": gpus, "object_store_memory": 150 * MB},
                "node_config": {}, "min_workers": lo, "max_workers": hi}

    return {
        "cluster_name": "dtl-fake", "max_workers": 3,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu": node(2, 0, 1, 1), "gpu": node(2, 1, 0, 2)},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 2.0,
        "idle_timeout_minutes": 0.1, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": []}


@pytest.fixture
def autoscaling_head(tmp_path):
    """The head, in its own process group (its autoscaler's nodes too: they are its
    children), killed with the group when the test ends. Returns (GCS address, dashboard)."""
    from ray._private.services import get_node_ip_address

    port = free_port()
    gcs = f"{get_node_ip_address()}:{port}"
    config = tmp_path / "autoscaler.json"
    config.write_text(json.dumps(cluster_config(gcs)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    with ray_head([f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                   f"--object-store-memory={100 * MB}", f"--autoscaling-config={config}"],
                  env, "rc") as (_, dashboard):
        yield gcs, dashboard


class NodeWatch(threading.Thread):
    """Polls the cluster's nodes (Ray's state API, through the head's dashboard) every
    second: every node seen alive with its resources, and the most GPU nodes alive at once."""

    def __init__(self, dashboard):
        super().__init__(daemon=True)
        self.dashboard, self.seen, self.most_gpu_nodes = dashboard, {}, 0
        self.stopped = threading.Event()

    def gpu_nodes_alive(self) -> list[str]:
        from ray.util.state import list_nodes

        alive = [n for n in list_nodes(address=self.dashboard, detail=True,
                                       raise_on_missing_output=False) if n.state == "ALIVE"]
        for n in alive:
            self.seen[n.node_id] = dict(n.resources_total)
        gpus = [n.node_id for n in alive if n.resources_total.get("GPU", 0) > 0]
        self.most_gpu_nodes = max(self.most_gpu_nodes, len(gpus))
        return gpus

    def run(self):
        while not self.stopped.is_set():
            try:
                self.gpu_nodes_alive()
            except Exception:  # noqa: BLE001 (the head is busy: the next poll counts)
                pass
            self.stopped.wait(1)


def test_pipeline_on_an_autoscaling_gpu_cluster(autoscaling_head, tiny_demo, tmp_path):
    """With scaling.use_gpu=true on a cluster that starts with no GPU node: the pending GPU
    requests make the autoscaler add GPU nodes; every Train worker (the stages', the
    teacher's, each trial's TorchTrainer's) and scoring actor runs on one (none on the CPU
    node); two trials run at the same time on different nodes (the trial table records them);
    every trial ends (a trial ASHA stops must give its placement group back: `rayenv`); the
    GPU nodes go away once idle. There is no CUDA here: the code falls back to CPU tensors
    (and gloo) on the logical GPUs."""
    from ray.util.state import list_actors

    gcs, dashboard = autoscaling_head
    watch = NodeWatch(dashboard)

    def cpu_node_up():  # the autoscaler's first node (min_workers=1)
        watch.gpu_nodes_alive()
        return any(r.get("CPU", 0) > 0 for r in watch.seen.values())

    wait_for(cpu_node_up, timeout=120, every=1)
    assert watch.gpu_nodes_alive() == [], "a GPU node was up before any work asked for one"
    watch.start()
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    args = [sys.executable, "-m", "dtl_ray", *cli_args(f, tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", tmp_path / "out", "gpu") + [
            "scaling.use_gpu=true", "scaling.num_workers=2", *SMALL_SEARCH,
            # the teacher and every trial on a TorchTrainer of one worker (Ray Train inside
            # Tune), every cell's candidates streamed through Ray Data
            "finetune.workers_per_trial=1", "finetune.teacher_workers=1",
            "finetune.in_memory_mb=0", *CONSISTENCY])]
    env = dict(os.environ, RAY_ADDRESS=gcs)
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    finally:
        watch.stopped.set()
        watch.join(timeout=30)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "the GPU nodes have no CUDA device" in proc.stdout

    gpu_nodes = {n for n, r in watch.seen.items() if r.get("GPU", 0) > 0}
    cpu_nodes = {n for n, r in watch.seen.items() if r.get("CPU", 0) > 0} - gpu_nodes
    assert watch.most_gpu_nodes == 2 and len(gpu_nodes) >= 2 and cpu_nodes, watch.seen
    actors = list_actors(address=dashboard, limit=10_000, detail=True,
                         raise_on_missing_output=False)
    by_class = {}
    for a in actors:  # (an actor the scoring pool asked for but never placed ran nowhere)
        if a.node_id:
            by_class.setdefault(a.class_name, []).append(a.node_id)
    # (a trial's own actor, `ImplicitFunc`, holds nothing and may run anywhere: it drives the
    # trial's TorchTrainer, whose workers are among the Train workers)
    for name in ("RayTrainWorker", "MapWorker(MapBatches(Scorer))"):
        assert by_class.get(name), (name, sorted(by_class))
        assert set(by_class[name]) <= gpu_nodes, (name, by_class[name], gpu_nodes)
    assert by_class.get("ImplicitFunc"), sorted(by_class)
    # a stage's two Train workers need two 1-GPU nodes (nodes removed between stages come
    # back with new ids)
    assert len(set(by_class["RayTrainWorker"])) >= 2

    trials = pd.read_parquet(tmp_path / "out" / "gpu" / "finetune" / "trials.parquet")
    assert set(trials["node_id"]) <= gpu_nodes
    overlapping = [(a.node_id, b.node_id) for a in trials.itertuples()
                   for b in trials.itertuples()
                   if a.trial_id < b.trial_id and a.started_at < b.ended_at
                   and b.started_at < a.ended_at]
    assert any(x != y for x, y in overlapping), trials[["trial_id", "node_id", "started_at",
                                                        "ended_at"]]
    # idle GPU nodes are removed
    try:
        wait_for(lambda: watch.gpu_nodes_alive() == [], timeout=180, every=2)
    except TimeoutError:  # what holds them: demands, requests, placement groups, actors
        from ray.util.state import list_placement_groups

        status = subprocess.run([os.path.join(BIN, "ray"), "status", f"--address={gcs}",
                                 "-v"], capture_output=True, text=True, timeout=120, env=env)
        groups = [(g.placement_group_id, g.name, g.state, g.creator_job_id, g.is_detached)
                  for g in list_placement_groups(address=dashboard, detail=True,
                                                 raise_on_missing_output=False)
                  if g.state != "REMOVED"]
        alive = [(a.class_name, a.node_id, a.is_detached) for a in list_actors(
            address=dashboard, detail=True, filters=[("state", "=", "ALIVE")],
            raise_on_missing_output=False)]
        raise AssertionError(f"GPU nodes still up 180 s after the run:\n{status.stdout}"
                             f"placement groups not removed: {groups}\nalive actors: {alive}")\
            from None
    print(f"GPU nodes {sorted(gpu_nodes)}; CPU node {sorted(cpu_nodes)}; Train workers on "
          f"{sorted(set(by_class['RayTrainWorker']))}; scoring actors on "
          f"{sorted(set(by_class['MapWorker(MapBatches(Scorer))']))}; trials "
          f"{trials[['trial_id', 'node_id', 'started_at', 'ended_at']].to_dict('records')}")
    print(json.dumps({k: v.get("seconds") for k, v in json.loads(
        (tmp_path / "out" / "gpu" / "report.json").read_text()).items() if isinstance(v, dict)}))
