"""Stage 5: fine-tune target models, searching the settings with Ray Tune (ASHA).

1. A *teacher* is fitted on labeled target train + the selected source candidates.
2. The unlabeled target pool is pseudo-labeled by the teacher, in the teacher's own task, from
   the images the pool already holds decoded.
3. One Tune search over cells (strategy x source fraction x target fraction) times the same
   `num_samples` settings (lr, layers, candidate weight) per cell, so every baseline gets the
   method's budget. Cells: `target_only` (0, 0), `all_source` (1, 0), `method`
   (discriminator), `random_subset` (random, same sizes), `self_training` (confidence only).
4. Trials are chosen on target val; each arm's best model is saved for evaluation.
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from dtl_ray import builders, checkpoints, data, finetuning, raytune, search, storage
from dtl_ray.config import (
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    ScalingConfig,
    SelectConfig,
)
from dtl_ray.layout import RunLayout
from dtl_ray.results import FinetuneResult
from dtl_ray.samples import SAMPLE_ID

__all__ = ["run", "trial_fn"]

STAGE = "finetune"


def trial_key(cell: int, setting: int) -> str:
    """A trial's name in `RunLayout.progress`: its cell and its setting (indices)."""
    return f"cell{cell:03d}-setting{setting:03d}"


def trial_fn(config: dict, pool: dict, sets: list, setup: dict) -> None:
    """A Tune trial: fine-tune one cell with one setting, report each epoch.

    After each epoch the trial's state (weights, optimiser, best-so-far) and its metrics so far
    are saved in `RunLayout.progress` (a weights-only checkpoint). A trial that finds its file
    (Tune retried it, or the driver was killed and the search runs again) first reports the
    epochs it already ran, so ASHA sees them again, then continues after the last one.
    """
    import ray
    import ray.tune
    import torch

    # where and when it ran, in every report (the trial table keeps the last)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "started_at": time.time()}
    f, scaling = setup["finetune"], setup["scaling"]
    torch.set_num_threads(max(1, scaling.cpus_per_worker))
    device = "cuda" if scaling.use_gpu and torch.cuda.is_available() else "cpu"
    cell, index = config["cell"], config["setting"]
    settings = finetuning.Settings(**setup["settings"][index], epochs=f.epochs,
                                   batch_size=f.batch_size, mix_ratio=f.mix_ratio,
                                   epoch_samples=setup["epoch_samples"], seed=setup["seed"])
    model = finetuning.target_model(setup["pretrain_model"], len(setup["classes"]))
    key = trial_key(cell, index)
    uri = storage.join(setup["progress"], f"{key}.pt")
    resume, history, resumed = None, [], []
    if storage.exists(uri):
        resume, meta = checkpoints.load(uri)
        history, resumed = list(meta["history"]), [*meta.get("resumed", []), len(meta["history"])]
    for metrics in history:
        ray.tune.report({**metrics, "key": key, **where, "reported_at": time.time()})
    for metrics, state in finetuning.train(
            model, pool["images"], sets[cell], pool["val_images"], pool["val_labels"],
            settings, setup["augment"], device, resume, pool.get("source_val"),
            f.label_free):
        history.append(metrics)
        checkpoints.save(uri, state, {"cell": cell, "setting": index, "history": history,
                                      "resumed": resumed})
        ray.tune.report({**metrics, "key": key, **where, "reported_at": time.time()})


def _pool(image_size: int, reading: data.Reading, manifest: data.Manifest,
          scores: pd.DataFrame) -> tuple[dict, dict, pd.DataFrame]:
    """Decoded images every trial may need, held in Ray's object store; `source_val` holds
    source val in the target's classes with its importance weights (label-free choice).

    Returns (arrays, sample_id -> row of `images`, the decoded rows with labels).
    """
    classes = manifest.target_classes
    rows = pd.concat([manifest.rows("target", ["train", "unlabeled"]),
                      manifest.rows("source", "train").query("label in @classes")])
    arrays = data.collect(data.good_rows(rows, image_size, reading, [SAMPLE_ID, "image"]))
    val = data.collect(data.good_rows(manifest.rows("target", "val"), image_size, reading,
                                      ["image", "label"]))
    local = {c: i for i, c in enumerate(classes)}
    src_val = manifest.rows("source", "val").query("label in @classes")
    sv = data.collect(data.good_rows(src_val, image_size, reading,
                                     [SAMPLE_ID, "image", "label"]))
    w = scores.set_index(SAMPLE_ID)["weight"].reindex(sv[SAMPLE_ID]).to_numpy(float)
    pool = {"images": arrays["image"], "val_images": val["image"],
            "val_labels": np.array([local[int(v)] for v in val["label"]], dtype=np.int64),
            "source_val": (sv["image"], np.array([local[int(v)] for v in sv["label"]],
                                                 dtype=np.int64), np.nan_to_num(w, nan=0.0))}
    pos = {s: i for i, s in enumerate(arrays[SAMPLE_ID])}
    return pool, pos, rows[rows[SAMPLE_ID].isin(pos)]


def _fit_one(pool: dict, train_set: finetuning.TrainSet, settings: finetuning.Settings,
             aug, scaling: ScalingConfig, pretrain_model: str, num_classes: int,
             label_rows: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """Fits one model to the end (the teacher, in a Ray task); returns its best state and, with
    it, the prediction (target-local class) and confidence for the pool rows `label_rows`
    (already decoded in the pool: nothing is read twice)."""
    import torch

    from dtl_ray import loops

    torch.set_num_threads(max(1, scaling.cpus_per_worker))
    device = "cuda" if scaling.use_gpu and torch.cuda.is_available() else "cpu"
    model = finetuning.target_model(pretrain_model, num_classes)
    last = None
    for _metrics, last in finetuning.train(model, pool["images"], train_set,  # noqa: B007
                                           pool["val_images"], pool["val_labels"], settings,
                                           aug, device):
        pass
    best = last["best"]
    model.load_state_dict(best["model"])
    probs = torch.softmax(loops.predict(loops.for_device(model, device),
                                        pool["images"][label_rows], device=device), dim=1)
    conf, pred = probs.max(1) if len(label_rows) else (torch.zeros(0), torch.zeros(0))
    return best, pred.numpy().astype(np.int64), conf.numpy().astype(np.float64)


def _search(f: FinetuneConfig, scaling: ScalingConfig, layout: RunLayout, pool: dict,
            sets: list, setup: dict, settings: list[dict]):
    """Runs the Tune experiment; returns its ResultGrid.

    An interrupted search is not restored with `Tuner.restore`: that unpickles Tune's files
    from the run folder (`tuner.pkl`, the experiment state's pickled trials), so anyone who
    can write to the storage prefix would run code in the driver. The old experiment folder
    is deleted unread and a new search starts; each trial resumes from its own weights-only
    file in `RunLayout.progress` (see `trial_fn`)."""
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(trial_fn, pool=pool, sets=sets, setup=setup),
        {"cpu": scaling.cpus_per_worker, "gpu": 1 if scaling.use_gpu else 0})
    root, fs = storage.train_storage(layout.stage(STAGE))
    name = posixpath.basename(layout.search)
    total = len(sets) * len(settings)
    if storage.exists(layout.search):  # an interrupted search: its trials' files remain
        storage.delete_tree(layout.search)
        saved = [n for n, _ in storage.list_files(layout.progress) if n.endswith(".pt")]
        print(f"[finetune] resuming the search: {len(saved)} of {total} trials have saved "
              f"progress in {layout.progress}", flush=True)
    tuner = ray.tune.Tuner(
        trainable,
        param_space={"cell": ray.tune.grid_search(list(range(len(sets)))),
                     "setting": ray.tune.grid_search(list(range(len(settings))))},
        tune_config=ray.tune.TuneConfig(
            metric="val_accuracy", mode="max",
            scheduler=ASHAScheduler(max_t=f.epochs, time_attr="epoch",
                                    grace_period=min(f.grace_period, f.epochs),
                                    reduction_factor=3),
            max_concurrent_trials=raytune.concurrency(f.max_concurrent_trials),
            # a trial's process (torch imported, the pool fetched) serves the next trial
            reuse_actors=True),
        run_config=ray.tune.RunConfig(
            name=name, storage_path=root, storage_filesystem=fs, verbose=0,
            failure_config=ray.tune.FailureConfig(max_failures=scaling.max_failures),
            callbacks=[raytune.trial_lines(total, settings)]),
    )
    with raytune.credentials_kept_out_of_ray_logs():
        return tuner.fit()


def _trial_table(grid, cells: list[search.Cell], settings: list[dict],
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
        pretrain: PretrainConfig, scaling: ScalingConfig, max_pixels: int,
        seed: int) -> FinetuneResult:
    """Teacher, pseudo-labels, the search, and each arm's chosen model. `pretrain` gives the
    augmentation, `select` the target pool's defaults, `max_pixels` the pixel limit."""
    import ray

    t0 = time.time()
    manifest = data.load_manifest(layout)
    classes = manifest.target_classes
    local = {c: i for i, c in enumerate(classes)}
    scores = data.read_parquet_df(layout.scores)
    pretrain_model = layout.backbone_model(adapted=f.init == "adapted")
    pool, pos, rows = _pool(model.image_size, data.reading(layout, max_pixels), manifest,
                            scores)
    labeled = rows[(rows["domain"] == "target") & (rows["split"] == "train")]
    print(f"[finetune] pool: {len(pos)} decoded images, {len(labeled)} labeled target",
          flush=True)
    pool_ref = ray.put(pool)

    # 1-2. teacher on labeled target + selected source candidates, then pseudo-labels
    cand = data.read_parquet_df(layout.candidates)
    src_cand = scores[scores[SAMPLE_ID].isin(cand.loc[cand["pool"] == "source", SAMPLE_ID])]
    teacher_set = search.train_set(labeled, src_cand, scores.iloc[:0].assign(pred=[]), pos,
                                   local, False)
    aug = builders.augment(pretrain)
    # the teacher gets a trial's budget: epochs as long as the all-source cell's
    all_source, _ = search.members(search.Cell("all_source", "all", 1.0, 0.0), scores,
                                   scores.iloc[:0], classes, seed, 0.0)
    budget = search.train_set(labeled, all_source, scores.iloc[:0].assign(pred=[]), pos, local,
                              False)
    teacher_settings = finetuning.Settings(
        lr=f.lr[0], train_layers="all", epochs=f.epochs, batch_size=f.batch_size,
        mix_ratio=f.mix_ratio, seed=seed,
        epoch_samples=finetuning.epoch_length([teacher_set, budget], f.mix_ratio))
    unl_rows = manifest.rows("target", "unlabeled")
    unl_rows = unl_rows[unl_rows[SAMPLE_ID].isin(pos)]
    remote = ray.remote(num_cpus=scaling.cpus_per_worker,
                        num_gpus=1 if scaling.use_gpu else 0)(_fit_one)
    best, pred, conf = ray.get(remote.remote(
        pool_ref, teacher_set, teacher_settings, aug, scaling, pretrain_model, len(classes),
        np.array([pos[s] for s in unl_rows[SAMPLE_ID]], dtype=np.int64)))
    teacher_uri = layout.teacher
    checkpoints.save_classifier(teacher_uri, best["model"], model.backbone, classes,
                                arm="teacher", val_accuracy=best["val_accuracy"])
    print(f"[finetune] teacher: val acc {best['val_accuracy']:.3f} (epoch {best['epoch'] + 1}, "
          f"{len(src_cand)} source candidates)", flush=True)
    # the teacher's pseudo-labels (global class ids) for every decodable unlabeled image
    unlabeled = pd.DataFrame({SAMPLE_ID: unl_rows[SAMPLE_ID].to_numpy(),
                              "pred": np.asarray(classes, dtype=np.int64)[pred],
                              "confidence": conf})
    unlabeled = unlabeled.merge(scores[[SAMPLE_ID, "p_target", "label"]], on=SAMPLE_ID)
    data.write_parquet_df(unlabeled, layout.pseudo_labels)

    # 3. the search
    cells = search.make_cells(f, select.target_fraction)
    sets = []
    for cell in cells:
        src, tgt = search.members(cell, scores, unlabeled, classes, seed,
                                  select.confidence_floor, select.balance_classes)
        sets.append(search.train_set(labeled, src, tgt, pos, local, f.weight_by_w))
    settings = search.settings_grid(f, seed)
    epoch_samples = finetuning.epoch_length(sets, f.mix_ratio)
    setup = {"finetune": f, "scaling": scaling, "augment": aug, "seed": seed,
             "pretrain_model": pretrain_model, "classes": classes, "epoch_samples": epoch_samples,
             "settings": settings, "progress": layout.progress}
    print(f"[finetune] search: {len(cells)} cells x {len(settings)} settings = "
          f"{len(cells) * len(settings)} trials, {epoch_samples} samples per epoch each",
          flush=True)
    grid = _search(f, scaling, layout, pool, sets, setup, settings)
    table, states, free_states = _trial_table(grid, cells, settings, layout)
    if table.empty:
        raise RuntimeError(f"every fine-tuning trial failed: see {layout.search}")
    table["n_candidates"] = [int((~sets[cells.index(search.Cell(
        r.arm, r.strategy, r.source_fraction, r.target_fraction))].labeled).sum())
                             for r in table.itertuples()]
    data.write_parquet_df(table, layout.trials)

    # 4. each arm's best trial on target val, and the overall choice
    chosen = {}
    for arm in search.ARMS + ["chosen"]:
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
                      "source_val_images": int(len(pool["source_val"][0]))}
    return FinetuneResult(
        by_cell=by_cell, label_free=label_free, trials=int(len(table)),
        trials_failed=int(len(cells) * len(settings) - len(table)), cells=len(cells),
        samples_per_epoch=int(epoch_samples), settings=settings, best=chosen["chosen"],
        arms=chosen, teacher_val_accuracy=float(best["val_accuracy"]),
        pseudo_labeled=int(len(unlabeled)), seconds=round(time.time() - t0, 2),
        trials_resumed={r.key: [int(e) for e in r.resumed_after.split(",")]
                        for r in table.itertuples() if r.resumed_after})
