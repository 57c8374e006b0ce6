"""Stage 1: pretrain backbone g and head h on source train (DDP with Ray Train).

Outputs the pretrained model (`RunLayout.pretrain_model`: the best epoch on source val) and a
summary.
"""

from __future__ import annotations

import time

import torch

from dtl_ray import console
from dtl_ray.config import DataConfig, ModelConfig, PretrainConfig, ScalingConfig
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.results import PretrainResult
from dtl_ray.data import manifests, readers
from dtl_ray.method import builders, loops
from dtl_ray.raykit import train
from dtl_ray.storage import checkpoints

__all__ = ["run", "train_fn"]

STAGE = "pretrain"


def _val(model, it, batch_size: int, device) -> tuple[float, float]:
    correct, total, loss_sum = 0.0, 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for b in it.iter_batches(batch_size=batch_size, batch_format="numpy"):
            logits = model(loops.to_input(b["image"], device))
            y = torch.tensor(b["label"]).long().to(device)
            correct += float((logits.argmax(1) == y).sum())
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            total += len(y)
    correct, total, loss_sum = train.allreduce_sum([correct, total, loss_sum], device)
    return correct / max(total, 1), loss_sum / max(total, 1)


def train_fn(config: dict) -> dict:
    """Per-worker training loop (Ray Train). `config`: the `model`, `data` and `pretrain`
    sections, `seed`, `cpus` (threads), `use_gpu`, `num_classes`."""
    import ray.train
    import ray.train.torch

    pre, dcfg, seed = config["pretrain"], config["data"], config["seed"]
    rank, _ = train.world()
    loops.set_threads(config["cpus"])
    torch.manual_seed(seed)
    model = builders.classifier(config["model"], config["num_classes"])
    if config["use_gpu"]:  # faster convolutions under bf16 autocast
        model = model.to(memory_format=torch.channels_last)
    device = train.device()
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=pre.lr, weight_decay=pre.weight_decay)
    start, best = 0, {"accuracy": -1.0, "epoch": -1, "state": None}
    resumed: list[int] = []
    restored = train.restore()
    if restored is not None:
        state, meta = restored
        resumed = list(meta.get("resumed_from", [])) + [meta["epoch"] + 1]
        loops.unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = meta["epoch"] + 1
        best = {"accuracy": meta["best_accuracy"], "epoch": meta["best_epoch"],
                "state": state["best"]}
        if rank == 0:
            console.detail(f"[pretrain] resuming after epoch {start} from checkpoint")
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    aug = builders.augment(pre)
    train_it, val_it = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    bs = dcfg.batch_size
    history = list(restored[1].get("history", [])) if restored else []
    for epoch in range(start, pre.epochs):
        t0 = time.time()
        batches = ((b["image"], b["label"]) for b in readers.epoch_batches(
            train_it, bs, epoch, seed, dcfg.shuffle_buffer))
        stats = loops.train_epoch(model, batches, opt, aug, gen, device)
        acc, loss = _val(model, val_it, 4 * bs, device)
        if acc > best["accuracy"]:
            best = {"accuracy": acc, "epoch": epoch, "state": loops.cpu_state(model)}
        metrics = {"epoch": epoch, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
                   "val_accuracy": acc, "val_loss": loss, "best_val_accuracy": best["accuracy"],
                   "best_epoch": best["epoch"], "seconds": time.time() - t0}
        if rank == 0:
            console.detail(f"[pretrain] epoch {epoch + 1}/{pre.epochs}  "
                  f"train loss {stats['loss']:.3f} acc {stats['accuracy']:.3f}  "
                  f"source val acc {acc:.3f} loss {loss:.3f}  ({metrics['seconds']:.1f}s)")
        history.append({k: float(metrics[k]) for k in ("epoch", "train_loss", "val_accuracy",
                                                        "val_loss", "seconds")})
        state = {"model": loops.cpu_state(model), "best": best["state"],
                 "optimizer": opt.state_dict()}
        train.report_epoch(metrics, state, {"epoch": epoch, "best_accuracy": best["accuracy"],
                                               "best_epoch": best["epoch"], "history": history,
                                               "resumed_from": resumed})
    return {"history": history}


def loop_config(model: ModelConfig, data_cfg: DataConfig, pretrain: PretrainConfig,
                scaling: ScalingConfig, seed: int, num_classes: int) -> dict:
    """What `train_fn` reads."""
    return {"model": model, "data": data_cfg, "pretrain": pretrain, "seed": seed,
            "cpus": scaling.cpus_per_worker, "use_gpu": scaling.use_gpu,
            "num_classes": num_classes}


def run(layout: RunLayout, model: ModelConfig, data: DataConfig, pretrain: PretrainConfig,
        scaling: ScalingConfig, seed: int) -> PretrainResult:
    """Pretrains on source train, keeps the best source-val epoch. Returns the summary."""
    t0 = time.time()
    manifest = manifests.load(layout)
    cols = ["image", "label"]
    size, cache = model.frame, data.cache
    reading = readers.reading(layout, data.max_image_pixels, data.max_rejected_fraction,
                           STAGE)
    datasets = {
        "train": readers.training_dataset(manifest.rows("source", "train"), size, cache, cols, seed,
                                       reading),
        "val": readers.training_dataset(manifest.rows("source", "val"), size, cache, cols, None,
                                     reading),
    }
    result = train.fit(train_fn, scaling, *layout.train_run(STAGE), datasets, loop_config(
        model, data, pretrain, scaling, seed, len(manifest.classes)),
        progress=("pretrain", pretrain.epochs, "epoch"))
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        state, meta = checkpoints.load_dir(d)
    result = PretrainResult(
        source_val_accuracy=float(meta["best_accuracy"]), best_epoch=int(meta["best_epoch"]) + 1,
        epochs=pretrain.epochs, curve=meta["history"],
        resumed_from_epochs=meta["resumed_from"], seconds=round(time.time() - t0, 2))
    checkpoints.save_classifier(layout.pretrain_model, state["best"], model.backbone,
                                manifest.classes, image_size=model.image_size,
                                source_val_accuracy=result.source_val_accuracy)
    return result
