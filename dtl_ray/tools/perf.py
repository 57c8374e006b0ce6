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
import threading
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from dtl_ray import checkpoints, data, loops, models, scoring, storage
from dtl_ray.config import ConfigError, PipelineConfig
from dtl_ray.layout import STAGES, RunLayout

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
    m = data.build_manifest(storage.join(data_uri, "source"), storage.join(data_uri, "target"),
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
    tap = models.FeatureTap(model.backbone, layer).eval()
    with torch.no_grad():
        in_dim = tap(torch.zeros(2, 3, image_size, image_size)).shape[1]
    disc = models.Discriminator(in_dim, 128)
    disc_uri = layout.discriminator
    checkpoints.save_discriminator(disc_uri, disc.state_dict(), layer, in_dim, 128, 1, 1, True)
    return model_uri, disc_uri


class _Files(torch.utils.data.Dataset):
    """Manifest rows -> (index, decoded uint8 image): the decode the Ray path does."""

    def __init__(self, paths: list[str], image_size: int) -> None:
        self.paths, self.size = paths, image_size
        self.fs = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.fs is None:
            self.fs = storage.resolve(self.paths[0])[0]
        raw = storage.read_file(self.fs, storage.path_of(self.paths[i]))
        return i, torch.from_numpy(data.decode_image(raw, self.size))


def score_plain(rows: pd.DataFrame, model_uri: str, disc_uri: str, classes: list[int],
                out_uri: str, image_size: int, batch_size: int, decode_workers: int,
                threads: int) -> dict:
    """The plain PyTorch loop: DataLoader decode, the same Scorer forward, a Parquet write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    torch.set_num_threads(threads)
    t0 = time.time()
    scorer = scoring.Scorer(model_uri, classes, disc_uri)
    loader = torch.utils.data.DataLoader(
        _Files(rows["path"].tolist(), image_size), batch_size=batch_size,
        num_workers=decode_workers, persistent_workers=False,
        prefetch_factor=4 if decode_workers else None)
    fs, path = storage.resolve(out_uri)
    fs.create_dir(path, recursive=True)
    writer, n = None, 0
    cols = {c: rows[c].to_numpy() for c in ("sample_id", "domain", "split", "path", "label")}
    for idx, images in loader:
        idx = idx.numpy()
        batch = {c: v[idx] for c, v in cols.items()}
        batch["image"] = images.numpy()
        batch["error"] = np.full(len(idx), "", dtype=object)
        out = scorer(batch)
        table = pa.table({k: out[k] for k in ("sample_id", "domain", "split", "path", "label",
                                               "p_target", "weight", "pred", "confidence",
                                               "entropy")})
        if writer is None:
            writer = pq.ParquetWriter(fs.open_output_stream(f"{path}/part-0.parquet"),
                                      table.schema)
        writer.write_table(table)
        n += len(idx)
    if writer is not None:
        writer.close()
    seconds = time.time() - t0
    return {"images": n, "seconds": round(seconds, 3),
            "images_per_second": round(n / seconds, 1)}


def _stage_run_dir(uri: str, rows: pd.DataFrame, classes: list[str], backbone: str,
                   image_size: int) -> tuple[str, str]:
    """A fresh run folder holding what the score stage reads: manifest and the two models
    (their URIs are returned)."""
    shutil.rmtree(uri, ignore_errors=True)
    data.save_manifest(data.Manifest(table=rows, classes=classes), RunLayout(uri))
    return save_models(uri, backbone, len(classes), image_size)


def score_ray(cfg: PipelineConfig, run_uri: str, actors: int) -> dict:
    """The real score stage with `actors` scoring actors."""
    from dtl_ray.stages import score

    cfg = replace(cfg, score=replace(cfg.score, actors=actors))
    t0 = time.time()
    result = score.run(cfg, RunLayout(run_uri))
    seconds = time.time() - t0
    n = result.rows_out + result.rows_rejected
    steady = max(seconds - result.startup_seconds, 1e-9)
    return {"images": n, "actors": actors, "seconds": round(seconds, 3),
            "images_per_second": round(n / seconds, 1),
            "startup_seconds": result.startup_seconds,
            # after the first batch: the rate a long stage converges to
            "steady_images_per_second": round((n - result.startup_rows) / steady, 1)}


class PeakMemory:
    """Samples the proportional set size (PSS) of this process and all its descendants (the
    local Ray cluster's processes when Ray was started here): shared pages count once.

    Linux only (reads /proc). `peak_mb` is the largest sum seen; `base_mb` the sum at start.
    `tree=False` watches this process alone.
    """

    def __init__(self, interval_s: float = 0.2, tree: bool = True) -> None:
        self.interval_s = interval_s
        self.tree = tree
        self.peak_mb = self.base_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _tree(root: int) -> list[int]:
        parent: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parent.setdefault(ppid, []).append(int(d))
        out, todo = [], [root]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += parent.get(p, [])
        return out

    @staticmethod
    def _pss_mb(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def sample(self) -> float:
        pids = self._tree(os.getpid()) if self.tree else [os.getpid()]
        return sum(self._pss_mb(p) for p in pids)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.base_mb = self.peak_mb = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.sample())


def _decoded(rows: pd.DataFrame, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    b = data.decode_batch({"path": rows["path"].to_numpy()}, image_size)
    return b["image"], rows["label"].to_numpy()


def train_plain(cfg: PipelineConfig, rows: pd.DataFrame, val: pd.DataFrame,
                num_classes: int, epochs: int, shuffle: bool = True) -> dict:
    """`epochs` pretrain epochs (train pass + source-val pass) in a plain PyTorch loop with the
    threads one Train worker gets; per-epoch seconds and source val accuracy.

    shuffle=False feeds `rows` in their order (a manifest's: sorted by class)."""
    from dtl_ray import builders

    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    x, y = _decoded(rows, cfg.model.image_size)
    vx, vy = _decoded(val, cfg.model.image_size)
    torch.manual_seed(cfg.seed)
    model = builders.classifier(cfg.model, num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain.lr,
                            weight_decay=cfg.pretrain.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug = builders.augment(cfg.pretrain)
    bs = cfg.data.batch_size
    seconds, accuracy = [], []
    for epoch in range(epochs):
        t0 = time.time()
        order = (np.random.default_rng(cfg.seed * 1000 + epoch).permutation(len(x)) if shuffle
                 else np.arange(len(x)))
        batches = ((x[order[i:i + bs]], y[order[i:i + bs]]) for i in range(0, len(x), bs))
        loops.train_epoch(model, batches, opt, aug, gen)
        accuracy.append(loops.evaluate(loops.predict(model, vx, 4 * bs), vy)["accuracy"])
        seconds.append(time.time() - t0)
    return {"epoch_seconds": [round(s, 3) for s in seconds], "images": len(x),
            "val_accuracy": [round(a, 4) for a in accuracy]}


def train_ray(cfg: PipelineConfig, run_uri: str, rows: pd.DataFrame, val: pd.DataFrame,
              num_classes: int, epochs: int, workers: int) -> dict:
    """`epochs` epochs of the pretrain stage's own train loop under TorchTrainer."""
    from dtl_ray import raytrain
    from dtl_ray.stages import pretrain

    cfg = replace(cfg, scaling=replace(cfg.scaling, num_workers=workers),
                  pretrain=replace(cfg.pretrain, epochs=epochs))
    cols = ["image", "label"]
    size = cfg.model.image_size
    datasets = {"train": data.training_dataset(rows, size, "always", cols, cfg.seed),
                "val": data.training_dataset(val, size, "always", cols, None)}
    stage_uri = storage.join(run_uri, f"train-{workers}w")
    shutil.rmtree(stage_uri, ignore_errors=True)
    t0 = time.time()
    result = raytrain.fit(pretrain.train_fn, cfg, stage_uri, "train", datasets,
                          {"num_classes": num_classes})
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

    from dtl_ray import demo as demo_mod
    from dtl_ray import pipeline

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
    pipeline.ensure_ray()
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
        auto = scoring.actor_pool(0, cfg.scaling.cpus_per_worker, cfg.scaling.use_gpu)
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
        m = data.build_manifest(storage.join(data_uri, "source"),
                                storage.join(data_uri, "target"), [".png"])
        tr, va = m.rows("source", "train"), m.rows("source", "val")
        k = len(m.classes)
        plain = train_plain(cfg, tr, va, k, epochs)
        r1 = train_ray(cfg, out, tr, va, k, epochs, 1)
        r2 = train_ray(cfg, out, tr, va, k, epochs, 2) if cpus >= 2 else None
        torch.set_num_threads(cpus)
        fig = {"train_ray_over_plain": round(_steady(r1["epoch_seconds"])
                                             / _steady(plain["epoch_seconds"]), 3),
               "train_2_over_1_workers": (round(_steady(r2["epoch_seconds"])
                                                / _steady(r1["epoch_seconds"]), 3)
                                          if r2 else None),
               "note": "epoch = train pass + source-val pass; ratios use epochs after the first",
               "plain": plain, "ray_1_worker": r1, "ray_2_workers": r2}
        _emit(figures, "train", fig, out_json)

    if "demo" in want and demo:
        run_cfg = pipeline.absolute(replace(cfg, name="demo", storage=out,
                                            source=replace(cfg.source,
                                                           uri=storage.join(data_uri, "source")),
                                            target=replace(cfg.target,
                                                           uri=storage.join(data_uri, "target"))))
        shutil.rmtree(os.path.join(out, "demo"), ignore_errors=True)
        t0 = time.time()
        doc = pipeline.run(run_cfg)
        wall = time.time() - t0
        stages = {k: doc[k]["seconds"] for k in STAGES if k in doc}
        _emit(figures, "demo", {
            "demo_seconds": round(wall, 1),
            "stage_seconds": stages,
            "stage_share": {k: round(v / wall, 3) for k, v in stages.items() if v is not None},
            "method_test_accuracy": doc["evaluate"]["method"]["target_test_accuracy"]},
              out_json)
    with open(os.path.join(out, "perf_history.jsonl"), "a") as f:  # run-to-run tracking
        f.write(json.dumps(figures) + "\n")
    return figures
