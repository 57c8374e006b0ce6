"""One training run of the search: a Tune trial (`trial_fn`), in its own process or on a
`TorchTrainer` of `finetune.workers_per_trial` workers (`fit_on_train`, also the teacher's).

After each epoch a trial's state (weights, optimiser, best-so-far) and its metrics so far are
saved in `RunLayout.progress` (a weights-only checkpoint). A trial that finds its file (Tune
retried it, or the driver was killed and the search runs again) first reports the epochs it
already ran, so ASHA sees them again, then continues after the last one.
"""

from __future__ import annotations

import dataclasses
import time

from dtl_ray import storage
from dtl_ray.method import loops, target_fit
from dtl_ray.stages.finetune.inputs import cell_inputs, fit_cell
from dtl_ray.stages.finetune.specs import CellInputs, SearchSetup, TrialSpec
from dtl_ray.storage import checkpoints

__all__ = ["trial_key", "trial_spec", "trial_fn", "fit_on_train", "save_state"]


def trial_key(cell: int, setting: int) -> str:
    """A trial's name in `RunLayout.progress`: its cell and its setting (indices)."""
    return f"cell{cell:03d}-setting{setting:03d}"


def trial_spec(setup: SearchSetup, cell: int, index: int,
               settings: target_fit.Settings) -> TrialSpec:
    """The run of `settings` on cell `cell` (-1: the teacher), its seed from both."""
    f = setup.finetune
    return TrialSpec(
        settings=settings, pretrain_model=setup.pretrain_model, num_classes=len(setup.classes),
        val_images=setup.val_images, val_labels=setup.val_labels, augment=setup.augment,
        label_free=f.label_free, image_size=setup.image_size, reading=setup.reading,
        in_memory_mb=f.in_memory_mb, cache=setup.cache,
        seed=setup.seed + 31 * (cell + 1) + index, shuffle_buffer=setup.shuffle_buffer,
        cpus=setup.scaling.cpus_per_worker, source_val_rows=setup.source_val_rows, cell=cell,
        setting=index, backend=setup.backend)


def _save_progress(spec: TrialSpec, metrics: dict, state: dict) -> None:
    spec.history.append(metrics)
    checkpoints.save(spec.progress_uri, state, {"cell": spec.cell, "setting": spec.setting,
                                                "history": list(spec.history),
                                                "resumed": list(spec.resumed)})


def save_state(uri: str, state: dict) -> None:
    """The best state only (the teacher's)."""
    checkpoints.save(uri, {"best": state["best"]}, {})


def _train_worker(config: dict) -> None:
    """A Train worker of a trial (or of the teacher): its share of the steps, the candidates
    from its dataset shard when they stream; rank 0 saves the progress file, every worker
    reports each epoch (Tune sees rank 0's metrics through `TuneReportCallback`)."""
    import ray
    import ray.train
    import ray.train.torch

    from dtl_ray.raykit import train

    spec: TrialSpec = config["spec"]
    inputs: CellInputs = config["inputs"]
    shards = {name: ray.train.get_dataset_shard(name) for name in config["streamed"]}
    rank, world = train.world()
    loops.set_threads(spec.cpus)
    device = train.device()
    s = spec.settings
    spec = dataclasses.replace(spec, settings=dataclasses.replace(
        s, seed=s.seed + 7 * rank, epoch_samples=-(-s.epoch_samples // world)))
    resume = None
    if spec.progress_uri and storage.exists(spec.progress_uri):
        resume, _ = checkpoints.load(spec.progress_uri)
    prepare = (lambda m: ray.train.torch.prepare_model(m, move_to_device=device)) \
        if world > 1 else None
    extra = dict(spec.report_extra)
    if "node_id" in extra:  # where and since when rank 0 trains (Tune gets rank 0's
        # reports; the trial's own actor started before its workers were placed)
        extra.update(node_id=ray.get_runtime_context().get_node_id(), started_at=time.time())
    for metrics, state in fit_cell(spec, inputs, device, resume, shards, prepare=prepare):
        if rank == 0 and spec.progress_uri:
            _save_progress(spec, metrics, state)
        if rank == 0 and spec.keep_state:
            save_state(spec.keep_state, state)
        ray.train.report({**metrics, **extra, "reported_at": time.time()})


def fit_on_train(spec: TrialSpec, inputs: CellInputs, workers: int, setup: SearchSetup,
                 name: str, in_tune: bool) -> None:
    """`_train_worker` on a TorchTrainer of `workers` workers; in a Tune trial its reports
    reach Tune through `TuneReportCallback`."""
    import ray.train
    from ray.train import DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    f, scaling = setup.finetune, setup.scaling
    datasets = inputs.datasets()
    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    path, fs = storage.train_storage(setup.train_uri)
    TorchTrainer(
        _train_worker,
        train_loop_config={"spec": spec, "inputs": inputs.held(), "streamed": list(datasets)},
        torch_config=TorchConfig(backend=spec.backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker,
                                  **({"GPU": f.gpus_per_worker} if scaling.use_gpu else {})}),
        run_config=RunConfig(name=name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=scaling.max_failures),
                             callbacks=callbacks,
                             logging_config=ray.train.LoggingConfig(log_level="WARNING")),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(datasets)),
    ).fit()


def trial_fn(config: dict, tables: dict, setup: SearchSetup) -> None:
    """A Tune trial: fine-tune cell `config["cell"]` with setting `config["setting"]`, report
    each epoch (resuming from its progress file if it has one)."""
    import ray
    import ray.tune

    f = setup.finetune
    cell, index = config["cell"], config["setting"]
    key = trial_key(cell, index)
    # where and when it ran, in every report (the trial table keeps the last)
    where = {"key": key, "node_id": ray.get_runtime_context().get_node_id(),
             "started_at": time.time()}
    settings = target_fit.Settings(
        **setup.settings[index], epochs=f.epochs, batch_size=f.batch_size,
        mix_ratio=f.mix_ratio, epoch_samples=setup.epoch_samples[cell], seed=setup.seed,
        consistency=setup.consistency if setup.cells[cell].consistency else None)
    uri = storage.join(setup.progress, f"{key}.pt")
    resume, history, resumed = None, [], ()
    if storage.exists(uri):
        resume, meta = checkpoints.load(uri)
        history = list(meta["history"])
        resumed = (*meta.get("resumed", []), len(history))
        # written before ASHA sees the history again: it may stop the trial at once (a rung
        # this trial's first life reached, but whose report Tune never got)
        checkpoints.save(uri, resume, {**meta, "resumed": list(resumed)})
    for metrics in history:
        ray.tune.report({**metrics, **where, "reported_at": time.time()})
    spec = dataclasses.replace(trial_spec(setup, cell, index, settings), progress_uri=uri,
                               history=history, resumed=resumed, report_extra=where)
    inputs = cell_inputs(tables["cells"][tables["cells"]["cell"] == cell], tables["rows"], spec,
                         tables.get("unlabeled"))
    if f.workers_per_trial > 0:
        fit_on_train(spec, inputs, f.workers_per_trial, setup, f"trial-{key}", in_tune=True)
        return
    loops.set_threads(setup.scaling.cpus_per_worker)
    for metrics, state in fit_cell(spec, inputs, loops.local_device(setup.scaling.use_gpu),
                                   resume):
        _save_progress(spec, metrics, state)
        ray.tune.report({**metrics, **where, "reported_at": time.time()})
