"""Performance figures: the Ray path against plain PyTorch on the same images, model and cores.

`dtl-ray perf` (or `make bench`) prints one JSON line per figure and writes them all to
`runs/perf/perf.json`:

1. scoring throughput: the real `score` stage (Ray Data actor-pool map) against a plain PyTorch
   `DataLoader` loop doing the same decode, transform, forward (the same `Scorer`) and Parquet
   write; and the stage with 1 against 2 actors;
2. training: one `pretrain` epoch under `TorchTrainer` (1 worker) against the same epoch in a
   plain loop (same model, batches, augmentation and threads); 2 workers against 1;
3. memory: peak memory of the score stage on N and 10N images (proportional set size of the
   driver and every Ray process, so shared object-store pages count once);
4. end to end: the demo pipeline's wall time and each stage's share (from `report.json`).

Throughput figures use the same image files: the bench's rows repeat the demo pair's files
under distinct sample ids. Models have random weights (speed does not depend on them).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from dtl_ray import storage
from dtl_ray.config import PipelineConfig
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.registry import NAMES
from dtl_ray.data import manifests, readers
from dtl_ray.errors import ConfigError
from dtl_ray.method import domain, models
from dtl_ray.raykit import pools
from dtl_ray.storage import checkpoints
from dtl_ray.tools.memory import PeakMemory
from dtl_ray.tools.plain import score_plain, train_plain

__all__ = ["machine", "bench_rows", "score_plain", "score_ray", "train_plain", "train_ray",
           "PeakMemory", "run"]


def machine() -> dict:
    """Cores, memory, GPU and versions of the machine the figures come from."""
    import ray

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gb": mem, "gpu": gpu,
            "torch": torch.__version__, "ray": ray.__version__,
            "python": platform.python_version()}


def bench_rows(data_uri: str, n: int) -> tuple[pd.DataFrame, list[str], list[int]]:
    """`n` manifest rows over the files of the demo pair at `data_uri` (repeated, each with its
    own sample id), the class names and the target classes."""
    m = manifests.build(storage.join(data_uri, "source"), storage.join(data_uri, "target"),
                            [".png", ".jpg", ".jpeg"])
    base = m.table
    reps = -(-n // len(base))
    rows = pd.concat([base.assign(sample_id=base["sample_id"] + f"#{r}") for r in range(reps)],
                     ignore_index=True).iloc[:n].reset_index(drop=True)
    return rows, m.classes, m.target_classes


def save_models(uri: str, backbone: str, num_classes: int, image_size: int,
                seed: int = 0) -> tuple[str, str]:
    """A random classifier and discriminator saved as the pretrain and discriminate stages
    save theirs; returns their URIs."""
    torch.manual_seed(seed)
    model = models.build_classifier(backbone, num_classes)
    layout = RunLayout(uri)
    model_uri = layout.pretrain_model
    checkpoints.save_classifier(model_uri, model.state_dict(), backbone,
                                list(range(num_classes)), image_size=image_size)
    layer = None  # the backbone's pooled output, the discriminate stage's default
    tap = domain.FeatureTap(model.backbone, layer).eval()
    with torch.no_grad():
        in_dim = tap(torch.zeros(2, 3, image_size, image_size)).shape[1]
    disc = domain.Discriminator(in_dim, 128)
    disc_uri = layout.discriminator
    checkpoints.save_discriminator(disc_uri, [disc.state_dict()], [(1.0, 0.0)], 0.2, layer,
                                   in_dim, 128, 1, 1, True)
    return model_uri, disc_uri


def _stage_run_dir(uri: str, rows: pd.DataFrame, classes: list[str], backbone: str,
                   image_size: int) -> tuple[str, str]:
    """A fresh run folder holding what the score stage reads: manifest and the two models
    (their URIs are returned)."""
    shutil.rmtree(uri, ignore_errors=True)
    manifests.save(manifests.Manifest(table=rows, classes=classes), RunLayout(uri))
    return save_models(uri, backbone, len(classes), image_size)


def score_ray(cfg: PipelineConfig, run_uri: str, actors: int) -> dict:
    """The real score stage with `actors` scoring actors."""
    from dtl_ray.stages import score

    cfg = replace(cfg, score=replace(cfg.score, actors=actors))
    t0 = time.time()
    result = score.run(RunLayout(run_uri), cfg.score, cfg.scaling, cfg.model, cfg.data,
                       replace(cfg.discriminate, mode="standard"))
    seconds = time.time() - t0
    n = result.rows_out + result.rows_rejected
    steady = max(seconds - result.startup_seconds, 1e-9)
    return {"images": n, "actors": actors, "seconds": round(seconds, 3),
            "images_per_second": round(n / seconds, 1),
            "startup_seconds": result.startup_seconds,
            # after the first batch: the rate a long stage converges to
            "steady_images_per_second": round((n - result.startup_rows) / steady, 1)}


def train_ray(cfg: PipelineConfig, run_uri: str, rows: pd.DataFrame, val: pd.DataFrame,
              num_classes: int, epochs: int, workers: int) -> dict:
    """`epochs` epochs of the pretrain stage's own train loop under TorchTrainer."""
    from dtl_ray.raykit import train
    from dtl_ray.stages import pretrain

    cfg = replace(cfg, scaling=replace(cfg.scaling, num_workers=workers),
                  pretrain=replace(cfg.pretrain, epochs=epochs))
    cols = ["image", "label"]
    size = cfg.model.image_size
    datasets = {"train": readers.training_dataset(rows, size, "always", cols, cfg.seed),
                "val": readers.training_dataset(val, size, "always", cols, None)}
    stage_uri = storage.join(run_uri, f"train-{workers}w")
    shutil.rmtree(stage_uri, ignore_errors=True)
    t0 = time.time()
    result = train.fit(pretrain.train_fn, cfg.scaling, stage_uri, "train", datasets,
                          pretrain.loop_config(cfg.model, cfg.data, cfg.pretrain, cfg.scaling,
                                               cfg.seed, num_classes))
    wall = time.time() - t0
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        _, meta = checkpoints.load_dir(d)
    return {"epoch_seconds": [round(h["seconds"], 3) for h in meta["history"]],
            "workers": workers, "wall_seconds": round(wall, 2), "images": len(rows)}


def _steady(seconds: list[float]) -> float:
    """Mean epoch time without the first (warm-up) epoch."""
    rest = seconds[1:] or seconds
    return float(np.mean(rest))


def _emit(figures: dict, key: str, value: dict, out_uri: str) -> None:
    figures[key] = value
    print(json.dumps({"figure": key, **value}), flush=True)
    storage.write_json(out_uri, figures)


def run(cfg: PipelineConfig, out: str = "runs/perf", data_uri: str | None = None,
        n: int = 3000, repeats: int = 2, epochs: int = 3, demo: bool = True,
        only: list[str] | None = None) -> dict:
    """All figures; returns the perf document (also written to `<out>/perf.json`)."""
    import ray

    from dtl_ray import pipeline
    from dtl_ray.data.pairs import demo as demo_mod
    from dtl_ray.pipeline import preflight
    from dtl_ray.raykit import connect

    out = os.path.abspath(out)
    out_json = os.path.join(out, "perf.json")
    figures: dict = {"machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime())}
    figures_known = ["score", "memory", "train", "demo"]
    unknown = sorted(set(only or []) - set(figures_known))
    if unknown:
        raise ConfigError(f"unknown perf figure(s) {unknown}: choose from {figures_known}")
    want = set(only or figures_known)
    data_uri = data_uri or os.path.join(out, "demo-data")
    if not storage.exists(storage.join(data_uri, "_SEED_0")):
        print(f"[perf] writing the demo pair to {data_uri}", flush=True)
        storage.write_json(storage.join(data_uri, "_SEED_0"),
                           demo_mod.write_demo(data_uri, seed=0))
    cpus = os.cpu_count() or 1
    connect.ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", cpus))
    size, backbone = cfg.model.image_size, cfg.model.backbone
    figures["settings"] = {"backbone": backbone, "image_size": size, "n": n,
                           "score_images": 10 * n, "score_batch_size": cfg.score.batch_size,
                           "train_batch_size": cfg.data.batch_size, "ray_cpus": cpus}

    if want & {"score", "memory"}:
        rows, names, classes = bench_rows(data_uri, 10 * n)
    if "score" in want:  # on 10n images, so fixed start-up costs weigh little
        run_uri = os.path.join(out, "score")
        model_uri, disc_uri = _stage_run_dir(run_uri, rows, names, backbone, size)
        plain, ray1, ray_auto, ray2 = [], [], [], []
        auto = pools.actor_pool(0, cfg.scaling.cpus_per_worker, cfg.scaling.use_gpu) or 1
        for _ in range(repeats):  # interleaved, so drifts of a noisy machine hit both
            plain.append(score_plain(rows, model_uri, disc_uri, classes,
                                     os.path.join(out, "plain-scores"), size,
                                     cfg.score.batch_size, max(cpus - 1, 0), 1))
            ray_auto.append(score_ray(cfg, run_uri, auto))
            ray1.append(score_ray(cfg, run_uri, 1))
            ray2.append(score_ray(cfg, run_uri, 2))
        torch.set_num_threads(cpus)
        best = {k: max(v, key=lambda r: r["images_per_second"])
                for k, v in (("plain", plain), ("ray", ray_auto), ("ray_1", ray1),
                             ("ray_2", ray2))}
        _emit(figures, "score", {
            "score_ray_over_plain": round(best["ray"]["images_per_second"]
                                          / best["plain"]["images_per_second"], 3),
            "score_2_over_1_actors": round(best["ray_2"]["images_per_second"]
                                           / best["ray_1"]["images_per_second"], 3),
            "score_2_over_1_actors_steady": round(best["ray_2"]["steady_images_per_second"]
                                                  / best["ray_1"]["steady_images_per_second"], 3),
            "note": "whole-stage wall time (start-up included) on the same files; "
                    "steady = after the first scored batch; best run of each",
            "ray_actors": auto, "plain_decode_workers": max(cpus - 1, 0),
            "best_of": repeats, **{f"{k}_runs": v for k, v in
                                   (("plain", plain), ("ray", ray_auto), ("ray_1", ray1),
                                    ("ray_2", ray2))}}, out_json)

    if "memory" in want:
        mem = {}
        for label, k in (("1x", n), ("10x", 10 * n)):
            run_uri = os.path.join(out, f"memory-{label}")
            _stage_run_dir(run_uri, rows.iloc[:k], names, backbone, size)
            with PeakMemory() as pm:
                r = score_ray(cfg, run_uri, 0)
            mem[label] = {"images": k, "peak_mb": round(pm.peak_mb, 1),
                          "idle_mb": round(pm.base_mb, 1),
                          "stage_mb": round(pm.peak_mb - pm.base_mb, 1),
                          "seconds": r["seconds"]}
        _emit(figures, "memory", {
            "score_peak_rss_10x_over_1x": round(mem["10x"]["peak_mb"] / mem["1x"]["peak_mb"], 3),
            "stage_growth_10x_over_1x": round(mem["10x"]["stage_mb"]
                                              / max(mem["1x"]["stage_mb"], 1e-9), 3),
            **mem}, out_json)

    if "train" in want:
        m = manifests.build(storage.join(data_uri, "source"),
                                storage.join(data_uri, "target"), [".png"])
        tr, va = m.rows("source", "train"), m.rows("source", "val")
        k = len(m.classes)
        plain = train_plain(cfg, tr, va, k, epochs)
        r1 = train_ray(cfg, out, tr, va, k, epochs, 1)
        # two workers need a third CPU: holding every CPU, they leave none to Ray Data's tasks
        # that read (and reshuffle) their rows, and the epoch waits forever (it hung so)
        r2 = train_ray(cfg, out, tr, va, k, epochs, 2) if cpus >= 3 else None
        torch.set_num_threads(cpus)
        fig = {"train_ray_over_plain": round(_steady(r1["epoch_seconds"])
                                             / _steady(plain["epoch_seconds"]), 3),
               "train_2_over_1_workers": (round(_steady(r2["epoch_seconds"])
                                                / _steady(r1["epoch_seconds"]), 3)
                                          if r2 else None),
               "note": "epoch = train pass + source-val pass; ratios use epochs after the first"
                       + ("" if r2 else f"; no 2-worker figure on {cpus} CPUs (needs 3)"),
               "plain": plain, "ray_1_worker": r1, "ray_2_workers": r2}
        _emit(figures, "train", fig, out_json)

    if "demo" in want and demo:
        run_cfg = preflight.absolute(replace(cfg, name="demo", storage=out,
                                            source=replace(cfg.source,
                                                           uri=storage.join(data_uri, "source")),
                                            target=replace(cfg.target,
                                                           uri=storage.join(data_uri, "target"))))
        shutil.rmtree(os.path.join(out, "demo"), ignore_errors=True)
        t0 = time.time()
        doc = pipeline.run(run_cfg)
        wall = time.time() - t0
        stages = {k: doc[k]["seconds"] for k in NAMES if k in doc}
        _emit(figures, "demo", {
            "demo_seconds": round(wall, 1),
            "stage_seconds": stages,
            "stage_share": {k: round(v / wall, 3) for k, v in stages.items() if v is not None},
            "method_test_accuracy": doc["evaluate"]["method"]["target_test_accuracy"]},
              out_json)
    with open(os.path.join(out, "perf_history.jsonl"), "a") as f:  # run-to-run tracking
        f.write(json.dumps(figures) + "\n")
    return figures
