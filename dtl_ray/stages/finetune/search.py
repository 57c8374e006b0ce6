"""The search: one Tune experiment over cells (strategy x source fraction x target fraction)
times the same settings per cell, under ASHA; then one row per trial.

An interrupted search is not restored with `Tuner.restore`: that unpickles Tune's files from
the run folder (`tuner.pkl`, the experiment state's pickled trials), so anyone who can write to
the storage prefix would run code in the driver. The old experiment folder is deleted unread and
a new search starts; each trial resumes from its own weights-only file in `RunLayout.progress`
(see `trial`).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import asdict

import pandas as pd

from dtl_ray import console, storage
from dtl_ray.config import FinetuneConfig, ScalingConfig
from dtl_ray.contract.layout import RunLayout
from dtl_ray.method import design
from dtl_ray.raykit import tune
from dtl_ray.stages.finetune.specs import SearchSetup
from dtl_ray.stages.finetune.trial import trial_fn
from dtl_ray.storage import checkpoints

__all__ = ["run", "trial_table"]


def _leave_a_cpu_for_data(f: FinetuneConfig, scaling: ScalingConfig) -> int | None:
    """Trials that stream read through Ray Data tasks, which need CPUs no trial holds: on a
    cluster without an autoscaler, at most as many trials as leave one CPU free (an
    autoscaler adds nodes for pending decode tasks: no cap there)."""
    from dtl_ray.raykit import capacity

    if capacity.autoscaler_max() != {}:
        return None
    per_trial = scaling.cpus_per_worker * max(1, f.workers_per_trial)
    return max(1, (capacity.most("CPU") - 1) // per_trial)


def run(setup: SearchSetup, layout: RunLayout, tables: dict, n_cells: int):
    """Runs the Tune experiment over `n_cells` cells x `setup.settings`; returns its
    ResultGrid. `tables`: the cells' members (`cells`) and their manifest rows (`rows`)."""
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    f, scaling, settings = setup.finetune, setup.scaling, setup.settings
    # a trial that runs a TorchTrainer holds no CPU itself: its workers ask for theirs (Tune
    # wants a request that is not empty: 1 MB of memory; a fraction of a CPU would leave the
    # data tasks of a small cluster a fraction short of one)
    own = ({"cpu": 0, "memory": 2**20} if f.workers_per_trial > 0 else
           {"cpu": scaling.cpus_per_worker, "gpu": f.gpus_per_worker if scaling.use_gpu else 0})
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(trial_fn, tables=tables, setup=setup), own)
    root, fs = storage.train_storage(layout.stage("finetune"))
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
    if cap is None and setup.streams:
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
        grid = tuner.fit()
    if f.workers_per_trial > 0 or f.teacher_workers > 0:
        swept = tune.sweep_placement_groups()
        if swept:
            console.say(f"[finetune] removed {len(swept)} placement group(s) left by Train runs "
                        f"of stopped trials: {', '.join(swept)}")
    return grid


def trial_table(grid, cells: list[design.Cell], settings: list[dict],
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
        rows.append({"trial_id": tid, "cell": int(r.config["cell"]), **asdict(cell),
                     **settings[r.config["setting"]],
                     "best_val_accuracy": m["best_val_accuracy"],
                     "best_val_loss": m["best_val_loss"], "best_epoch": m["best_epoch"],
                     "epochs_run": m["epoch"], "samples_per_epoch": m["samples"],
                     # the consistency term's share of pseudo-labels kept in its last epoch
                     "mask_rate": m.get("mask_rate", float("nan")),
                     "best_free_risk": m.get("best_free_risk", float("nan")),
                     "best_free_epoch": m.get("best_free_epoch", -1), "key": m["key"],
                     # epochs it continued after (a retry or a new search), e.g. "1,3"
                     "resumed_after": ",".join(str(e) for e in meta.get("resumed", [])),
                     # the node it (last) ran on and when: its last session's start, last report
                     "node_id": m.get("node_id", ""),
                     "started_at": m.get("started_at", float("nan")),
                     "ended_at": m.get("reported_at", float("nan"))})
    return pd.DataFrame(rows), states, free_states
