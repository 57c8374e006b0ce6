"""How the pipeline grows with its data: the whole pipeline on generated data at 1x and 10x the
demo pair's size, each in a fresh process with its own local Ray whose object store is capped
small, so a stage that holds the data in the driver or the object store shows up as memory
growth or spilling.

`dtl-ray scale` (or `make scale`) writes `runs/scale/scale.json`: per size the images, the
driver's peak RSS, the object store's peak use (polled every 0.2 s), the bytes spilled, and
each stage's seconds; and the three ratios the scaling targets are stated in
(`docs/scaling.md`). Short epochs: this measures growth, not accuracy.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

__all__ = ["run", "measure_one", "TARGETS"]

# the targets of docs/scaling.md
TARGETS = {"driver_peak_rss_10x_over_1x": 1.3, "spilled_bytes_10x": 0,
           "worst_stage_time_10x_over_1x": 12.0}
# growth, not accuracy: the demo's small CNN at 64 px (at 10x the decoded source is 250 MB, over
# a quarter of the 300 MB store, so it streams: `data.cache=auto`), one epoch per training stage
# and one cell with one setting per arm
SHORT = ["model.backbone=smallcnn", "model.image_size=64", "data.batch_size=64",
         "pretrain.epochs=1", "discriminate.epochs=1", "discriminate.folds=2",
         "finetune.epochs=1", "finetune.grace_period=1", "finetune.source_fractions=[0.5]",
         "finetune.target_fractions=[0.0]", "finetune.lr=[0.003]",
         "finetune.train_layers=[all]", "finetune.num_samples=1"]


class StoreWatch(threading.Thread):
    """Polls the object store's use on every node (the raylets' memory info, as `ray memory`
    reads it): the peak, and the bytes spilled so far."""

    def __init__(self, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.every_s, self.peak, self.spilled = every_s, 0, 0
        self.samples = self.failed = 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        # this run's cluster by its address (without one, Ray looks for the machine's last
        # `ray start` cluster, which may be another one or long gone: every sample failed)
        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        stats = get_memory_info_reply(state).store_stats
        self.peak = max(self.peak, int(stats.object_store_bytes_used))
        self.spilled = max(self.spilled, int(stats.spilled_bytes_total))

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 (a busy raylet: the next sample counts)
                self.failed += 1
            self.samples += 1
            self.stopped.wait(self.every_s)


def measure_one(factor: float, out: str, store_mb: int, overrides: list[str]) -> dict:
    """One size, in this process: demo data at `factor`, a local Ray (2 CPUs at most, the
    object store capped at `store_mb`), the whole pipeline; returns the figures."""
    import ray

    from dtl_ray import config, pipeline
    from dtl_ray.raykit import connect

    data = os.path.join(out, f"data-{factor:g}x")
    marker = os.path.join(data, "_COUNTS.json")
    if not os.path.exists(marker):  # in a child: its memory is not the driver's peak
        subprocess.run([sys.executable, "-c", "import json, sys; from dtl_ray import demo; "
                        "c = demo.write_demo(sys.argv[1], seed=0, scale=float(sys.argv[2])); "
                        "json.dump(c, open(sys.argv[3], 'w'))", data, str(factor), marker],
                       check=True)
    with open(marker) as f:
        counts = json.load(f)
    # a fresh run every time: a run left by the last benchmark would skip its finished stages
    # and report their old seconds (and an empty object store) as this one's
    shutil.rmtree(os.path.join(out, f"run-{factor:g}x"), ignore_errors=True)
    cfg = config.load_config(overrides=[
        f"source.uri={data}/source", f"target.uri={data}/target", f"storage={out}",
        f"name=run-{factor:g}x", *SHORT, *overrides])
    ray.init(address="local", num_cpus=min(2, os.cpu_count() or 2),
             object_store_memory=store_mb * 2**20, dashboard_host="127.0.0.1",
             logging_level="WARNING", runtime_env=connect.runtime_env())
    watch = StoreWatch()
    watch.start()
    t0 = time.time()
    try:
        doc = pipeline.run(cfg)
    finally:
        watch.stopped.set()
        watch.join()
    watch.sample()  # the last figures (and proof that sampling works: it raises if not)
    ray.shutdown()
    if watch.failed > watch.samples / 2:
        raise RuntimeError(f"the object store could not be read in {watch.failed} of "
                           f"{watch.samples} samples: its figures would be wrong")
    images = sum(int(v) for k, v in counts.items() if k.count("/") == 1)  # domain/split
    return {"factor": factor, "images": images,
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                        / 1024, 1),
            "object_store_mb": store_mb, "store_peak_mb": round(watch.peak / 2**20, 1),
            "store_samples": watch.samples, "store_samples_failed": watch.failed,
            "spilled_bytes": watch.spilled, "seconds": round(time.time() - t0, 1),
            "stage_seconds": {s: doc[s]["seconds"] for s in doc
                              if isinstance(doc[s], dict) and "seconds" in doc[s]}}


def run(out: str = "runs/scale", factors=(1.0, 10.0), store_mb: int = 300,
        overrides: list[str] | None = None) -> dict:
    """Each size in a child process (its own peak RSS and Ray), then the ratios."""
    os.makedirs(out, exist_ok=True)
    sizes = []
    for factor in factors:
        print(f"[scale] {factor:g}x: running the pipeline ...", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "dtl_ray.tools.scale", "--one", str(factor), out,
             str(store_mb), json.dumps(overrides or [])],
            stdout=subprocess.PIPE, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{\"factor\"")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"the {factor:g}x run failed (exit {proc.returncode}): "
                               f"{proc.stdout[-2000:]}")
        one = json.loads(lines[-1])
        print(f"[scale] {factor:g}x: {one['images']} images, driver peak RSS "
              f"{one['driver_peak_rss_mb']} MB, object store peak {one['store_peak_mb']} MB "
              f"of {store_mb}, spilled {one['spilled_bytes']} B, {one['seconds']} s",
              flush=True)
        sizes.append(one)
    doc = {"sizes": sizes, "targets": TARGETS}
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        ratio = {s: round(b["stage_seconds"][s] / max(a["stage_seconds"][s], 0.01), 2)
                 for s in a["stage_seconds"] if s in b["stage_seconds"]}
        doc.update({
            "data_10x_over_1x": round(b["images"] / a["images"], 2),
            "driver_peak_rss_10x_over_1x": round(b["driver_peak_rss_mb"]
                                                 / a["driver_peak_rss_mb"], 3),
            "spilled_bytes_10x": b["spilled_bytes"],
            "stage_time_10x_over_1x": ratio,
            "worst_stage_time_10x_over_1x": max(ratio.values()) if ratio else None})
        doc["met"] = {
            "driver_peak_rss_10x_over_1x": doc["driver_peak_rss_10x_over_1x"]
            <= TARGETS["driver_peak_rss_10x_over_1x"],
            "spilled_bytes_10x": doc["spilled_bytes_10x"] <= TARGETS["spilled_bytes_10x"],
            "worst_stage_time_10x_over_1x": (doc["worst_stage_time_10x_over_1x"] or 0)
            <= TARGETS["worst_stage_time_10x_over_1x"]}
    with open(os.path.join(out, "scale.json"), "w") as f:
        json.dump(doc, f, indent=2)
    return doc


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--one":
        result = measure_one(float(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
                             json.loads(sys.argv[5]))
        print(json.dumps(result), flush=True)
    else:
        sys.exit("usage: python -m dtl_ray.tools.scale --one FACTOR OUT STORE_MB OVERRIDES_JSON")
