"""Ray Train plumbing shared by the TorchTrainer stages: trainer construction, resumable
checkpoints, and cross-worker sums.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable

import torch

from dtl_ray import console, storage
from dtl_ray.config import ScalingConfig
from dtl_ray.storage import checkpoints

__all__ = ["fit", "report_epoch", "restore", "allreduce_sum", "world", "device",
           "backend"]



def _watch_reports(snapshot_uri: str, desc: str, total: int | None, unit: str, stop) -> None:
    """A progress bar over a Train run's reports (epochs, folds): Ray Train's checkpoint
    manager snapshot counts them (`current_report_index`), read every 2 s until `stop`."""
    bar, shown, done = console.bar(total, desc, unit), 0, False
    while not done:
        done = stop.wait(2.0)  # (once more after the run ended: its last reports)
        try:
            n = int(storage.read_json(snapshot_uri).get("current_report_index", 0))
        except Exception:  # not written yet, or being replaced
            continue
        if n > shown:
            bar.update(n - shown)
            shown = n
    bar.close()


def fit(train_fn: Callable, scaling: ScalingConfig, stage_uri: str, name: str,
        datasets: dict, loop_config: dict, progress: tuple[str, int | None, str] | None = None):
    """Runs `train_fn(loop_config)` on `scaling.num_workers` workers; returns the Train Result.

    `loop_config` holds what the loop needs (config sections as dataclasses, numbers, URIs),
    never the whole pipeline config. The run is named after the stage (deterministic), so
    running again resumes it. `progress` (a name, the number of reports the loop makes and
    what one report is: "epoch", "fold"): a bar on the console while it runs.
    """
    import threading

    import ray.train
    from ray.train import DataConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train import ScalingConfig as TrainScaling
    from ray.train.torch import TorchConfig, TorchTrainer

    path, fs = storage.train_storage(stage_uri)
    run_config = RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=fs,
        failure_config=FailureConfig(max_failures=scaling.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        logging_config=LoggingConfig(log_level="WARNING"),
    )
    trainer = TorchTrainer(
        train_fn,
        torch_config=TorchConfig(backend=backend(scaling.use_gpu)),
        train_loop_config=loop_config,
        scaling_config=TrainScaling(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker,
                                  **({"GPU": 1} if scaling.use_gpu else {})}),
        run_config=run_config,
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all"),
    )
    if progress is None:
        return trainer.fit()
    stop = threading.Event()
    watch = threading.Thread(target=_watch_reports, daemon=True, args=(
        storage.join(stage_uri, name, "checkpoint_manager_snapshot.json"), *progress, stop))
    watch.start()
    try:
        return trainer.fit()
    finally:
        stop.set()
        watch.join(timeout=10)


@functools.cache
def gpus_have_cuda() -> bool:
    """Whether a GPU of the cluster is a CUDA device (one 1-GPU task asks; on an autoscaling
    cluster it waits for the first GPU node, as the stage would)."""
    import ray

    @ray.remote(num_cpus=0, num_gpus=1)
    def probe() -> bool:
        import torch

        return torch.cuda.is_available()

    return bool(ray.get(probe.remote()))


def backend(use_gpu: bool) -> str:
    """The process group's backend: NCCL on CUDA GPUs; gloo on CPUs, and where GPUs are only
    logical (a simulated cluster, a node without CUDA): training then runs on CPU tensors."""
    if not use_gpu:
        return "gloo"
    if gpus_have_cuda():
        return "nccl"
    console.say("[dtl-ray] warning: scaling.use_gpu=true but the GPU nodes have no CUDA "
                "device: training runs on their CPUs (gloo)")
    return "gloo"


def world() -> tuple[int, int]:
    """(rank, world size) of this Train worker."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def allreduce_sum(values: list[float], device) -> list[float]:
    """Sums numbers over all workers (identity on one worker)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def allreduce_min(value: float, device) -> float:
    """The smallest of a number over all workers."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return float(t.item())


def restore() -> tuple[dict, dict] | None:
    """The (state, meta) of the run's latest checkpoint, if it is resuming."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return checkpoints.load_dir(d)


def report_epoch(metrics: dict, state: dict, meta: dict) -> None:
    """Reports metrics; rank 0 attaches a checkpoint (every worker calls this: a barrier)."""
    import ray.train

    rank, _ = world()
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        checkpoints.save_dir(d, state, meta)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def device() -> torch.device:
    """This Train worker's device: its GPU, or the CPU where CUDA is absent although a GPU was
    requested (a logical GPU: Ray's simulated clusters, a node without drivers)."""
    import ray.train.torch

    return ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
