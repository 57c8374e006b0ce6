"""Stage 5: fine-tune target models, searching the settings with Ray Tune (ASHA).

1. A *teacher* is fitted on labeled target train + the selected source candidates.
2. The unlabeled target pool is pseudo-labeled by the teacher (a Ray Data actor pool, as the
   score stage scores).
3. One Tune search over cells (strategy x source fraction x target fraction) times the same
   `num_samples` settings (lr, layers, candidate weight) per cell, so every baseline gets the
   method's budget. Cells: `target_only` (0, 0), `all_source` (1, 0), `method`
   (discriminator), `random_subset` (random, same sizes), `self_training` (confidence only).
4. Trials are chosen on target val; each arm's best model is saved for evaluation.

Nothing in the driver grows with the images: it holds tables of ids, labels and weights (the
cells' members, `cells.parquet`). Each trial (and the teacher) reads its own cell: the labeled
target and target val decoded into its memory (few labels), the candidates too when they fit
`finetune.in_memory_mb`, else streamed through Ray Data every epoch. With
`finetune.workers_per_trial` >= 1 a trial trains on a `TorchTrainer` of that many workers (the
candidates split between them); with 0 in its own process.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from dtl_ray import console, storage
from dtl_ray.config import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    ScalingConfig,
    ScoreConfig,
    SelectConfig,
)
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.results import FinetuneResult
from dtl_ray.data import readers, samples
from dtl_ray.data.samples import SAMPLE_ID, side
from dtl_ray.data.scorefiles import read_scores
from dtl_ray.method import builders, design, target_fit
from dtl_ray.raykit import tune
from dtl_ray.storage import checkpoints

__all__ = ["run", "trial_fn", "fit_cell"]

STAGE = "finetune"


def trial_key(cell: int, setting: int) -> str:
    """A trial's name in `RunLayout.progress`: its cell and its setting (indices)."""
    return f"cell{cell:03d}-setting{setting:03d}"


def _worker_request(f: FinetuneConfig, scaling: ScalingConfig) -> dict:
    return {"CPU": scaling.cpus_per_worker,
            **({"GPU": f.gpus_per_worker} if scaling.use_gpu else {})}


def _streams(n_rows: int, spec: dict) -> bool:
    """Whether a set of `n_rows` images is streamed rather than held in memory."""
    return n_rows * side(spec["image_size"]) ** 2 * 3 > spec["in_memory_mb"] * 2**20


def _cell_inputs(members: pd.DataFrame, rows: pd.DataFrame, spec: dict) -> dict:
    """What a cell's training reads: labeled target decoded here (few labels); the candidates
    decoded here when they fit `in_memory_mb`, else a lazy Ray dataset (`image`, `y`, `w`) in
    a seeded order; source val (label-free choice) the same way."""
    size, reading = spec["image_size"], spec["reading"]
    m = members.merge(rows, on=SAMPLE_ID, how="inner")
    lab = readers.decode_here(m[m["labeled"]], size, reading, ["image", "y"])
    cand_rows = m[~m["labeled"]]
    out = {"lab_images": lab["image"], "lab_y": np.asarray(lab["y"], np.int64),
           "n_candidates": int(len(cand_rows)), "cand": None, "cand_ds": None,
           "source_val": None, "source_val_ds": None}
    if len(cand_rows) and not _streams(len(cand_rows), spec):
        c = readers.decode_here(cand_rows, size, reading, ["image", "y", "w"])
        out["cand"] = (c["image"], np.asarray(c["y"], np.int64), np.asarray(c["w"], float))
    elif len(cand_rows):
        out["cand_ds"] = readers.training_dataset(cand_rows, size, spec["cache"],
                                               ["image", "y", "w"], spec["seed"], reading)
    sv = spec["source_val_rows"]
    if len(sv) and not _streams(len(sv), spec):
        c = readers.decode_here(sv, size, reading, ["image", "y", "w"])
        out["source_val"] = (c["image"], np.asarray(c["y"], np.int64), np.asarray(c["w"], float))
    elif len(sv):
        out["source_val_ds"] = readers.good_rows(sv, size, reading, ["image", "y", "w"])
    return out


def _batches_of(inputs: dict, settings: target_fit.Settings, shard, buffer: int):
    """The `batches(epoch, rng)` function of a cell (`finetuning`), its candidates in memory
    or from `shard` (a dataset or a Train worker's shard), passes seeded by (seed, epoch, k)."""
    lab_images, lab_y = inputs["lab_images"], inputs["lab_y"]
    if inputs["cand"] is not None or shard is None:
        images, y, w = inputs["cand"] or (lab_images[:0], lab_y[:0], np.zeros(0))
        members = pd.DataFrame({"y": np.concatenate([lab_y, y]),
                                "w": np.concatenate([np.ones(len(lab_y)), w]),
                                "labeled": np.arange(len(lab_y) + len(y)) < len(lab_y)})
        return target_fit.memory_batches(np.concatenate([lab_images, images]),
                                         design.as_train_set(members), settings)
    bs = settings.batch_size

    def passes(epoch: int, k: int):  # the local shuffle buffer's seed: (seed, epoch, k)
        return readers.epoch_batches(shard, bs, epoch * 1_009 + k, settings.seed, buffer)

    return target_fit.stream_batches(lab_images, lab_y, inputs["n_candidates"], passes, settings)


def _source_val_of(inputs: dict, shard=None, batch_size: int = 256):
    """The `source_val()` function of `target_fit.train`, or None."""
    if inputs["source_val"] is not None:
        images, y, w = inputs["source_val"]
        if not len(y):
            return None
        return lambda: ((images[i:i + batch_size], y[i:i + batch_size], w[i:i + batch_size])
                        for i in range(0, len(y), batch_size))
    ds = shard if shard is not None else inputs["source_val_ds"]
    if ds is None:
        return None
    return lambda: ((b["image"], b["y"], b["w"]) for b in ds.iter_batches(
        batch_size=batch_size, batch_format="numpy"))


def fit_cell(spec: dict, inputs: dict, device, resume=None, cand_shard=None, sv_shard=None,
             prepare=None):
    """Trains one cell with one setting (`spec["settings"]`); yields (metrics, state) per
    epoch (`target_fit.train`)."""
    model = target_fit.target_model(spec["pretrain_model"], spec["num_classes"])
    batches = _batches_of(inputs, spec["settings"], cand_shard if cand_shard is not None
                          else inputs["cand_ds"], spec["shuffle_buffer"])
    return target_fit.train(model, batches, spec["val_images"], spec["val_labels"],
                            spec["settings"], spec["augment"], device, resume,
                            _source_val_of(inputs, sv_shard), spec["label_free"], prepare)


def _train_worker(config: dict) -> None:
    """A Train worker of a trial (or of the teacher): its share of the steps, the candidates
    from its dataset shard when they stream; rank 0 saves the progress file, every worker
    reports each epoch (Tune sees rank 0's metrics through `TuneReportCallback`)."""
    import ray
    import ray.train
    import ray.train.torch

    from dtl_ray.raykit import train

    spec, inputs = config["spec"], config["inputs"]
    rank, world = train.world()
    train.set_threads(spec["cpus"])
    device = train.device()
    settings = dataclasses.replace(spec["settings"], seed=spec["settings"].seed + 7 * rank,
                                   epoch_samples=-(-spec["settings"].epoch_samples // world))
    spec = {**spec, "settings": settings}
    resume = None
    if spec["progress_uri"] and storage.exists(spec["progress_uri"]):
        resume, _ = checkpoints.load(spec["progress_uri"])
    cand = ray.train.get_dataset_shard("candidates") if inputs["cand_ds"] is not None else None
    sv = ray.train.get_dataset_shard("source_val") if inputs["source_val_ds"] is not None \
        else None
    prepare = (lambda m: ray.train.torch.prepare_model(m, move_to_device=device)) \
        if world > 1 else None
    extra = dict(spec["report_extra"])
    if "node_id" in extra:  # where and since when rank 0 trains (Tune gets rank 0's
        # reports; the trial's own actor started before its workers were placed)
        extra.update(node_id=ray.get_runtime_context().get_node_id(), started_at=time.time())
    for metrics, state in fit_cell(spec, inputs, device, resume, cand, sv, prepare):
        if rank == 0 and spec["progress_uri"]:
            _save_progress(spec, metrics, state)
        if rank == 0 and spec.get("keep_state"):
            _save_state(spec["keep_state"], state)
        ray.train.report({**metrics, **extra, "reported_at": time.time()})


def _save_progress(spec: dict, metrics: dict, state: dict) -> None:
    uri = spec["progress_uri"]
    history = [*spec["history"], metrics]
    spec["history"] = history
    checkpoints.save(uri, state, {"cell": spec["cell"], "setting": spec["setting"],
                                  "history": history, "resumed": spec["resumed"]})


def _save_state(uri: str, state: dict) -> None:
    checkpoints.save(uri, {"best": state["best"]}, {})


def _fit_on_train(spec: dict, inputs: dict, workers: int, scaling: ScalingConfig,
                  f: FinetuneConfig, name: str, stage_uri: str, in_tune: bool) -> None:
    """`_train_worker` on a TorchTrainer of `workers` workers; in a Tune trial its reports
    reach Tune through `TuneReportCallback`."""
    import ray.train
    from ray.train import DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    datasets = {}
    if inputs["cand_ds"] is not None:
        datasets["candidates"] = inputs["cand_ds"]
    if inputs["source_val_ds"] is not None:
        datasets["source_val"] = inputs["source_val_ds"]
    light = {k: v for k, v in inputs.items() if k not in ("cand_ds", "source_val_ds")}
    light.update(cand_ds=None if inputs["cand_ds"] is None else True,
                 source_val_ds=None if inputs["source_val_ds"] is None else True)
    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    path, fs = storage.train_storage(stage_uri)
    TorchTrainer(
        _train_worker,
        train_loop_config={"spec": spec, "inputs": light},
        torch_config=TorchConfig(backend=spec["backend"]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=scaling.use_gpu,
            resources_per_worker=_worker_request(f, scaling)),
        run_config=RunConfig(name=name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=scaling.max_failures),
                             callbacks=callbacks,
                             logging_config=ray.train.LoggingConfig(log_level="WARNING")),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["candidates"] if "candidates" in datasets
                                  else []),
    ).fit()


def _spec(setup: dict, cell: int, index: int, settings: target_fit.Settings) -> dict:
    f = setup["finetune"]
    return {"settings": settings, "pretrain_model": setup["pretrain_model"],
            "num_classes": len(setup["classes"]), "val_images": setup["val_images"],
            "val_labels": setup["val_labels"], "augment": setup["augment"],
            "label_free": f.label_free, "image_size": setup["image_size"],
            "reading": setup["reading"], "in_memory_mb": f.in_memory_mb,
            "cache": setup["cache"], "seed": setup["seed"] + 31 * (cell + 1) + index,
            "shuffle_buffer": setup["shuffle_buffer"], "cpus": setup["scaling"].cpus_per_worker,
            "source_val_rows": setup["source_val_rows"], "cell": cell, "setting": index,
            "progress_uri": None, "history": [], "resumed": [], "report_extra": {},
            "keep_state": None, "backend": setup["backend"]}


def trial_fn(config: dict, tables: dict, setup: dict) -> None:
    """A Tune trial: fine-tune one cell with one setting, report each epoch.

    After each epoch the trial's state (weights, optimiser, best-so-far) and its metrics so far
    are saved in `RunLayout.progress` (a weights-only checkpoint). A trial that finds its file
    (Tune retried it, or the driver was killed and the search runs again) first reports the
    epochs it already ran, so ASHA sees them again, then continues after the last one.
    """
    import ray
    import ray.tune
    import torch

    f, scaling = setup["finetune"], setup["scaling"]
    cell, index = config["cell"], config["setting"]
    key = trial_key(cell, index)
    # where and when it ran, in every report (the trial table keeps the last)
    where = {"key": key, "node_id": ray.get_runtime_context().get_node_id(),
             "started_at": time.time()}
    settings = target_fit.Settings(**setup["settings"][index], epochs=f.epochs,
                                   batch_size=f.batch_size, mix_ratio=f.mix_ratio,
                                   epoch_samples=setup["epoch_samples"], seed=setup["seed"])
    spec = _spec(setup, cell, index, settings)
    uri = storage.join(setup["progress"], f"{key}.pt")
    resume, history, resumed = None, [], []
    if storage.exists(uri):
        resume, meta = checkpoints.load(uri)
        history, resumed = list(meta["history"]), [*meta.get("resumed", []), len(meta["history"])]
        # written before ASHA sees the history again: it may stop the trial at once (a rung
        # this trial's first life reached, but whose report Tune never got)
        checkpoints.save(uri, resume, {**meta, "resumed": resumed})
    for metrics in history:
        ray.tune.report({**metrics, **where, "reported_at": time.time()})
    spec.update(progress_uri=uri, history=history, resumed=resumed, report_extra=where)
    members = tables["cells"][tables["cells"]["cell"] == cell]
    inputs = _cell_inputs(members, tables["rows"], spec)
    if f.workers_per_trial > 0:
        _fit_on_train(spec, inputs, f.workers_per_trial, scaling, f, f"trial-{key}",
                      setup["train_uri"], in_tune=True)
        return
    torch.set_num_threads(max(1, scaling.cpus_per_worker))
    device = "cuda" if scaling.use_gpu and torch.cuda.is_available() else "cpu"
    for metrics, state in fit_cell(spec, inputs, device, resume):
        _save_progress(spec, metrics, state)
        ray.tune.report({**metrics, **where, "reported_at": time.time()})


def _fit_teacher(setup: dict, members: pd.DataFrame, rows: pd.DataFrame,
                 settings: target_fit.Settings, out_uri: str) -> None:
    """Fits the teacher to the end (a Ray task, or a TorchTrainer with
    `finetune.teacher_workers`); its best state goes to `out_uri`."""
    import torch

    f, scaling = setup["finetune"], setup["scaling"]
    spec = _spec(setup, -1, 0, settings)
    spec.update(source_val_rows=setup["source_val_rows"].iloc[:0], keep_state=out_uri)
    inputs = _cell_inputs(members, rows, spec)
    if f.teacher_workers > 0:
        _fit_on_train(spec, inputs, f.teacher_workers, scaling, f, "teacher",
                      setup["train_uri"], in_tune=False)
        return
    torch.set_num_threads(max(1, scaling.cpus_per_worker))
    device = "cuda" if scaling.use_gpu and torch.cuda.is_available() else "cpu"
    last = None
    for _metrics, last in fit_cell(spec, inputs, device):  # noqa: B007
        pass
    _save_state(out_uri, last)


def _leave_a_cpu_for_data(f: FinetuneConfig, scaling: ScalingConfig) -> int | None:
    """Trials that stream read through Ray Data tasks, which need CPUs no trial holds: on a
    cluster without an autoscaler, at most as many trials as leave one CPU free (an
    autoscaler adds nodes for pending decode tasks: no cap there)."""
    from dtl_ray.raykit import capacity

    if capacity.autoscaler_max() != {}:
        return None
    per_trial = scaling.cpus_per_worker * max(1, f.workers_per_trial)
    return max(1, (capacity.most("CPU") - 1) // per_trial)


def _search(f: FinetuneConfig, scaling: ScalingConfig, layout: RunLayout, tables: dict,
            setup: dict, settings: list[dict], n_cells: int):
    """Runs the Tune experiment; returns its ResultGrid.

    An interrupted search is not restored with `Tuner.restore`: that unpickles Tune's files
    from the run folder (`tuner.pkl`, the experiment state's pickled trials), so anyone who
    can write to the storage prefix would run code in the driver. The old experiment folder
    is deleted unread and a new search starts; each trial resumes from its own weights-only
    file in `RunLayout.progress` (see `trial_fn`)."""
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    # a trial that runs a TorchTrainer holds no CPU itself: its workers ask for theirs (Tune
    # wants a request that is not empty: 1 MB of memory; a fraction of a CPU would leave the
    # data tasks of a small cluster a fraction short of one)
    own = ({"cpu": 0, "memory": 2**20} if f.workers_per_trial > 0 else
           {"cpu": scaling.cpus_per_worker, "gpu": f.gpus_per_worker if scaling.use_gpu else 0})
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(trial_fn, tables=tables, setup=setup), own)
    root, fs = storage.train_storage(layout.stage(STAGE))
    name = posixpath.basename(layout.search)
    total = n_cells * len(settings)
    if storage.exists(layout.search):  # an interrupted search: its trials' files remain
        storage.delete_tree(layout.search)
        saved = [n for n, _ in storage.list_files(layout.progress) if n.endswith(".pt")]
        console.say(f"[finetune] resuming the search: {len(saved)} of {total} trials have "
                    f"saved progress in {layout.progress}")
    # A trial on a TorchTrainer ends by returning, never by Tune stopping it at its last
    # epoch: the stop would kill the trial's actor while its Train controller shuts down, after
    # the controller has stopped Ray Train's placement-group cleaner and before it removes
    # its placement group, which then holds its nodes' GPUs and CPUs until the driver ends
    # (seen on the simulated cluster: the last trials waited forever). ASHA's rungs are the
    # same (they lie below max_t); a trial it stops at a rung is killed mid-epoch, and its
    # controller's death is what the cleaner watches for.
    max_t = f.epochs + 1 if f.workers_per_trial > 0 else f.epochs
    cap = tune.concurrency(f.max_concurrent_trials)
    if cap is None and setup["streams"]:
        cap = _leave_a_cpu_for_data(f, scaling)
    tuner = ray.tune.Tuner(
        trainable,
        param_space={"cell": ray.tune.grid_search(list(range(n_cells))),
                     "setting": ray.tune.grid_search(list(range(len(settings))))},
        tune_config=ray.tune.TuneConfig(
            metric="val_accuracy", mode="max",
            scheduler=ASHAScheduler(max_t=max_t, time_attr="epoch",
                                    grace_period=min(f.grace_period, f.epochs),
                                    reduction_factor=3),
            max_concurrent_trials=cap,
            # a trial's process (torch imported) serves the next trial; not one that ran a
            # TorchTrainer (its Train run's actors and state are the old trial's)
            reuse_actors=f.workers_per_trial == 0),
        run_config=ray.tune.RunConfig(
            name=name, storage_path=root, storage_filesystem=fs, verbose=0,
            failure_config=ray.tune.FailureConfig(max_failures=scaling.max_failures),
            callbacks=[tune.trial_lines(total, settings)]),
    )
    with tune.credentials_kept_out_of_ray_logs():
        return tuner.fit()


def _trial_table(grid, cells: list[design.Cell], settings: list[dict],
                 layout: RunLayout) -> tuple[pd.DataFrame, dict, dict]:
    """One row per trial (cell, settings, best val, best label-free risk), each trial's best
    weights on target val, and its weights with the lowest label-free risk."""
    rows, states, free_states = [], {}, {}
    for r in grid:
        if r.error is not None or not r.metrics or "key" not in r.metrics:
            continue
        cell = cells[r.config["cell"]]
        m = r.metrics
        state, meta = checkpoints.load(storage.join(layout.progress, f"{m['key']}.pt"))
        tid = m.get("trial_id") or os.path.basename(r.path)
        states[tid] = state["best"]["model"]
        if state.get("best_free", {}).get("model") is not None:
            free_states[tid] = state["best_free"]["model"]
        rows.append({"trial_id": tid, **asdict(cell), **settings[r.config["setting"]],
                     "best_val_accuracy": m["best_val_accuracy"],
                     "best_val_loss": m["best_val_loss"], "best_epoch": m["best_epoch"],
                     "epochs_run": m["epoch"], "samples_per_epoch": m["samples"],
                     "best_free_risk": m.get("best_free_risk", float("nan")),
                     "best_free_epoch": m.get("best_free_epoch", -1), "key": m["key"],
                     # epochs it continued after (a retry or a new search), e.g. "1,3"
                     "resumed_after": ",".join(str(e) for e in meta.get("resumed", [])),
                     # the node it (last) ran on and when: its last session's start, last report
                     "node_id": m.get("node_id", ""),
                     "started_at": m.get("started_at", float("nan")),
                     "ended_at": m.get("reported_at", float("nan"))})
    return pd.DataFrame(rows), states, free_states


def _best(table: pd.DataFrame) -> pd.Series:
    """The trial with the highest val accuracy, then the lowest val loss."""
    return table.sort_values(["best_val_accuracy", "best_val_loss", "trial_id"],
                             ascending=[False, True, True]).iloc[0]


def run(layout: RunLayout, f: FinetuneConfig, select: SelectConfig, model: ModelConfig,
        pretrain: PretrainConfig, scaling: ScalingConfig, dcfg: DataConfig, score: ScoreConfig,
        seed: int) -> FinetuneResult:
    """Teacher, pseudo-labels, the search, and each arm's chosen model. `pretrain` gives the
    augmentation, `select` the target pool's defaults, `dcfg` the reading (pixel limit, cache,
    shuffle buffer), `score` the pseudo-labelling pool's batch and actors."""
    import ray

    from dtl_ray.method import scoring
    from dtl_ray.raykit import train

    t0 = time.time()
    manifest = readers.load_manifest(layout)
    classes = manifest.target_classes
    local = {c: i for i, c in enumerate(classes)}
    scores = read_scores(layout)
    good = set(scores[SAMPLE_ID])  # the rows the score stage read (rejected ones are not)
    pretrain_model = layout.backbone_model(adapted=f.init == "adapted")
    reading = readers.reading(layout, dcfg.max_image_pixels, dcfg.max_rejected_fraction, STAGE)
    size = model.frame
    table = manifest.table
    labeled = manifest.rows("target", "train")
    labeled = labeled[labeled[SAMPLE_ID].isin(good)]
    val = readers.collect(readers.good_rows(manifest.rows("target", "val"), size, reading,
                                      ["image", "label"]))
    src_val = manifest.rows("source", "val").query("label in @classes")
    src_val = src_val[src_val[SAMPLE_ID].isin(good)].assign(
        y=lambda d: [local[int(v)] for v in d["label"]],
        w=lambda d: np.nan_to_num(scores.set_index(SAMPLE_ID)["weight"].reindex(
            d[SAMPLE_ID]).to_numpy(float), nan=0.0))
    print(f"[finetune] {len(labeled)} labeled target, {len(val['label'])} target val, "
          f"{len(src_val)} source val (label-free choice)", flush=True)
    aug = builders.augment(pretrain)
    setup = {"finetune": f, "scaling": scaling, "augment": aug, "seed": seed,
             "pretrain_model": pretrain_model, "classes": classes, "image_size": size,
             "reading": reading, "cache": dcfg.cache, "shuffle_buffer": dcfg.shuffle_buffer,
             "val_images": val["image"],
             "val_labels": np.array([local[int(v)] for v in val["label"]], dtype=np.int64),
             "source_val_rows": src_val, "progress": layout.progress,
             "train_uri": layout.stage(STAGE),
             # asked here, outside any trial's placement group (the probe needs a GPU)
             "backend": (train.backend(scaling.use_gpu)
                         if f.workers_per_trial > 0 or f.teacher_workers > 0 else None)}

    # 1-2. teacher on labeled target + selected source candidates, then pseudo-labels
    cand = readers.read_parquet_df(layout.candidates)
    src_cand = scores[scores[SAMPLE_ID].isin(cand.loc[cand["pool"] == "source", SAMPLE_ID])]
    no_target = scores.iloc[:0].assign(pred=[])
    teacher_members = design.members_table(labeled, src_cand, no_target, local, False)
    # the teacher gets a trial's budget: epochs as long as the all-source cell's
    all_source, _ = design.members(design.Cell("all_source", "all", 1.0, 0.0), scores,
                                   scores.iloc[:0], classes, seed, 0.0)
    budget = design.members_table(labeled, all_source, no_target, local, False)
    teacher_settings = target_fit.Settings(
        lr=f.lr[0], train_layers="all", epochs=f.epochs, batch_size=f.batch_size,
        mix_ratio=f.mix_ratio, seed=seed,
        epoch_samples=target_fit.epoch_length([design.as_train_set(teacher_members),
                                               design.as_train_set(budget)], f.mix_ratio))
    teacher_state = storage.join(layout.stage(STAGE), "teacher-state.pt")
    # in a task, never in the driver (it decodes its cell); with teacher_workers it only
    # drives a TorchTrainer and holds no CPU
    own = ({"num_cpus": 0} if f.teacher_workers > 0 else
           {"num_cpus": scaling.cpus_per_worker,
            "num_gpus": f.gpus_per_worker if scaling.use_gpu else 0})
    ray.get(ray.remote(**own)(_fit_teacher).remote(setup, teacher_members, table,
                                                  teacher_settings, teacher_state))
    best = checkpoints.load(teacher_state)[0]["best"]
    teacher_uri = layout.teacher
    checkpoints.save_classifier(teacher_uri, best["model"], model.backbone, classes,
                                arm="teacher", val_accuracy=best["val_accuracy"])
    storage.delete(teacher_state)
    print(f"[finetune] teacher: val acc {best['val_accuracy']:.3f} (epoch {best['epoch'] + 1}, "
          f"{len(src_cand)} source candidates)", flush=True)
    # the teacher's pseudo-labels (global class ids) for every decodable unlabeled image,
    # from an actor pool as the score stage's
    unl_rows = manifest.rows("target", "unlabeled")
    unl_rows = unl_rows[unl_rows[SAMPLE_ID].isin(good)]
    parts = []
    if len(unl_rows):
        labelled = scoring.score_dataset(unl_rows, teacher_uri, classes, score, scaling, size,
                                         max_pixels=dcfg.max_image_pixels)
        for b in labelled.select_columns([SAMPLE_ID, "pred", "confidence", "error"]) \
                .iter_batches(batch_format="pandas", batch_size=None):
            bad = b[b["error"] != ""]
            if len(bad):
                raise samples.DataError(
                    f"{len(bad)} unlabeled target image(s) read well before cannot be read "
                    f"now, e.g. {bad[SAMPLE_ID].iloc[0]} ({bad['error'].iloc[0]}): did the "
                    "data change during the run? Fix it and run with --restart-from pretrain")
            parts.append(b[[SAMPLE_ID, "pred", "confidence"]])
    unlabeled = (pd.concat(parts, ignore_index=True) if parts else
                 pd.DataFrame({SAMPLE_ID: [], "pred": [], "confidence": []}))
    unlabeled = unlabeled.astype({"pred": np.int64, "confidence": np.float64})
    unlabeled = unl_rows[[SAMPLE_ID]].merge(unlabeled, on=SAMPLE_ID)  # the manifest's order
    unlabeled = unlabeled.merge(scores[[SAMPLE_ID, "p_target", "label"]], on=SAMPLE_ID)
    readers.write_parquet_df(unlabeled, layout.pseudo_labels)

    # 3. the search: the cells' members (ids, labels, weights) are all the driver holds
    cells = design.make_cells(f, select.target_fraction)
    tables = []
    for i, cell in enumerate(cells):
        src, tgt = design.members(cell, scores, unlabeled, classes, seed,
                                  select.confidence_floor, select.balance_classes)
        tables.append(design.members_table(labeled, src, tgt, local, f.weight_by_w)
                      .assign(cell=i))
    members = pd.concat(tables, ignore_index=True)
    readers.write_parquet_df(members, storage.join(layout.stage(STAGE), "cells.parquet"))
    settings = design.settings_grid(f, seed)
    epoch_samples = target_fit.epoch_length([design.as_train_set(t) for t in tables],
                                            f.mix_ratio)
    per_image = side(size) ** 2 * 3
    streams = any(int((~t["labeled"]).sum()) * per_image > f.in_memory_mb * 2**20
                  for t in tables) or len(src_val) * per_image > f.in_memory_mb * 2**20
    setup.update(settings=settings, epoch_samples=epoch_samples, streams=streams)
    rows = table[table[SAMPLE_ID].isin(set(members[SAMPLE_ID]))]
    print(f"[finetune] search: {len(cells)} cells x {len(settings)} settings = "
          f"{len(cells) * len(settings)} trials, {epoch_samples} samples per epoch each",
          flush=True)
    grid = _search(f, scaling, layout, {"cells": members, "rows": rows}, setup, settings,
                   len(cells))
    trials, states, free_states = _trial_table(grid, cells, settings, layout)
    if trials.empty:
        raise RuntimeError(f"every fine-tuning trial failed: see {layout.search}")
    n_cand = {i: int((~t["labeled"]).sum()) for i, t in enumerate(tables)}
    trials["n_candidates"] = [n_cand[cells.index(design.Cell(
        r.arm, r.strategy, r.source_fraction, r.target_fraction))] for r in trials.itertuples()]
    readers.write_parquet_df(trials, layout.trials)
    table = trials

    # 4. each arm's best trial on target val, and the overall choice
    chosen = {}
    for arm in design.ARMS + ["chosen"]:
        sub = table if arm == "chosen" else table[table["arm"] == arm]
        if sub.empty:
            continue
        row = _best(sub)
        checkpoints.save_classifier(layout.model(arm), states[row["trial_id"]],
                                    model.backbone, classes, arm=str(row["arm"]),
                                    trial_id=str(row["trial_id"]))
        chosen[arm] = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    # each cell's best trial on val, kept so evaluation can plot test accuracy by fraction
    by_cell = []
    for i, cell in enumerate(cells):
        sub = table[(table["arm"] == cell.arm) & (table["strategy"] == cell.strategy)
                    & (table["source_fraction"] == cell.source_fraction)
                    & (table["target_fraction"] == cell.target_fraction)]
        if sub.empty:
            continue
        row = _best(sub)
        checkpoints.save_classifier(layout.model(f"cell-{i}"), states[row["trial_id"]],
                                    model.backbone, classes, arm=cell.arm,
                                    trial_id=str(row["trial_id"]))
        by_cell.append({"model": f"cell-{i}", **asdict(cell), "trial_id": str(row["trial_id"]),
                        "best_val_accuracy": float(row["best_val_accuracy"])})
    # 5. the label-free choice: lowest source-val risk over the whole search (no target label)
    free = table[table["trial_id"].isin(free_states)].dropna(subset=["best_free_risk"])
    label_free = None
    if not free.empty:
        row = free.sort_values(["best_free_risk", "trial_id"]).iloc[0]
        checkpoints.save_classifier(layout.model("label_free"), free_states[row["trial_id"]],
                                    model.backbone, classes, arm=str(row["arm"]),
                                    trial_id=str(row["trial_id"]), criterion=f.label_free)
        label_free = {"criterion": f.label_free, "arm": str(row["arm"]),
                      "trial_id": str(row["trial_id"]), "risk": float(row["best_free_risk"]),
                      "epoch": int(row["best_free_epoch"]),
                      "source_val_images": int(len(src_val))}
    return FinetuneResult(
        by_cell=by_cell, label_free=label_free, trials=int(len(table)),
        trials_failed=int(len(cells) * len(settings) - len(table)), cells=len(cells),
        samples_per_epoch=int(epoch_samples), settings=settings, best=chosen["chosen"],
        arms=chosen, teacher_val_accuracy=float(best["val_accuracy"]),
        pseudo_labeled=int(len(unlabeled)), seconds=round(time.time() - t0, 2),
        trials_resumed={r.key: [int(e) for e in r.resumed_after.split(",")]
                        for r in table.itertuples() if r.resumed_after})
