"""The performance harness compares like with like, and its memory probe measures memory."""

import os

import numpy as np
import pandas as pd

from dtl_ray import cli, config
from dtl_ray.data import manifests
from dtl_ray.storage import parquet
from dtl_ray.tools import perf


def test_plain_loop_and_score_stage_give_the_same_scores(ray_session, tiny_demo, tmp_path):
    """The plain-PyTorch baseline does the score stage's work: same rows, same numbers."""
    rows, names, classes = perf.bench_rows(str(tiny_demo), 400)
    assert len(rows) == 400 and rows["sample_id"].is_unique
    run_uri = str(tmp_path / "run")
    perf._stage_run_dir(run_uri, rows, names, "smallcnn", 32)
    cfg = config.load_config(None, [f"source.uri={tiny_demo}/source",
                                    f"target.uri={tiny_demo}/target", "model.image_size=32",
                                    "score.batch_size=64"])
    ray_fig = perf.score_ray(cfg, run_uri, actors=2)
    plain_fig = perf.score_plain(rows, f"{run_uri}/pretrain/model.pt",
                                 f"{run_uri}/discriminate/discriminator.pt", classes,
                                 str(tmp_path / "plain"), 32, 64, decode_workers=1, threads=1)
    assert ray_fig["images"] == plain_fig["images"] == 400
    # start-up ends with the first scored batch: it came back with at most a batch per actor
    assert 0 < ray_fig["images_per_second"] and 0 < ray_fig["steady_images_per_second"]
    assert ray_fig["steady_images_per_second"] >= ray_fig["images_per_second"]
    a = parquet.read_df(f"{run_uri}/score/scores").sort_values("sample_id")
    b = parquet.read_df(str(tmp_path / "plain")).sort_values("sample_id")
    assert list(a["sample_id"]) == list(b["sample_id"])
    for c in ("p_target", "weight", "confidence", "entropy"):
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-5, atol=1e-7)
    assert (a["pred"].to_numpy() == b["pred"].to_numpy()).all()


def test_peak_memory_sees_an_allocation():
    # this process alone: the Ray processes of the session come and go while it runs
    import mmap

    with perf.PeakMemory(interval_s=0.05, tree=False) as pm:
        block = mmap.mmap(-1, 200 * 2**20)  # fresh pages, never resident before
        for i in range(0, len(block), 4096):
            block[i] = 1  # touch every page
        pm.peak_mb = max(pm.peak_mb, pm.sample())
        block.close()
    assert pm.peak_mb - pm.base_mb > 150


def test_peak_memory_tree_holds_child_processes():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in perf.PeakMemory._tree(os.getpid())
        assert perf.PeakMemory._pss_mb(child.pid) > 0
    finally:
        child.kill()
        child.wait()


def test_bench_rows_repeat_files_under_new_ids(tiny_demo):
    rows, _, _ = perf.bench_rows(str(tiny_demo), 1000)
    base = manifests.build(str(tiny_demo / "source"), str(tiny_demo / "target"),
                               [".png"]).table
    assert len(rows) == 1000 and rows["sample_id"].is_unique
    assert set(rows["path"]) <= set(base["path"])
    assert pd.Series(rows["path"]).value_counts().max() == -(-1000 // len(base))


def test_perf_names_an_unknown_figure(capsys):
    assert cli.main(["perf", "--only", "score,speed"]) == 2
    assert "speed" in capsys.readouterr().err


def test_gpu_bench_runs_its_figures_on_cpu(ray_session, tmp_path, capsys):
    """jobs/gpu_bench.py is run on GPU machines only when one is lent: keep it from rotting."""
    import importlib.util
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "jobs", "gpu_bench.py")
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--device", "cpu", "--model", "smallcnn", "--image-size", "32",
                       "--batch", "64", "--train-batch", "32", "--seconds", "0.5",
                       "--images", "300", "--files", "60", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "gpu.json").read_text())
    assert doc["score_stage"]["images"] == 300
    for key in ("forward_ceiling", "train_amp", "score_stage"):
        assert doc[key]["images_per_second"] > 0
    assert 0 < doc["score_stage"]["over_ceiling"]


def test_the_scale_benchmarks_store_watch_reads_this_cluster(ray_session):
    """`dtl-ray scale`'s object-store figures come from this run's cluster (found by its
    address: without one Ray looked for the machine's last `ray start` cluster, and every
    sample failed silently, so the store's peak read 0)."""
    import time

    from dtl_ray.tools.scale import StoreWatch

    ray = ray_session
    watch = StoreWatch(every_s=0.05)
    watch.start()
    ref = ray.put(np.zeros(20 * 2**20, np.uint8))
    time.sleep(0.5)
    watch.stopped.set()
    watch.join()
    watch.sample()
    del ref
    assert watch.samples >= 2 and watch.failed == 0
    assert watch.peak >= 20 * 2**20
