"""DANN (Ganin & Lempitsky 2015) as a Ray Train worker loop: g and h train on source labels
while a domain head behind a gradient reversal layer pushes g's features to be
domain-invariant. The discriminate stage runs it in adversarial mode (or as the `dann` row).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from dtl_ray import console
from dtl_ray.data import readers
from dtl_ray.method import builders, domain, loops
from dtl_ray.raykit import train
from dtl_ray.stages.discriminate import fit
from dtl_ray.stages.discriminate.specs import DannSpec

__all__ = ["dann_fn"]


def _cycle(it, batch_size: int, seed: int, buffer_batches: int):
    """Endless shuffled batches of a dataset shard (the target side of DANN is smaller)."""
    epoch = 0
    while True:
        n = 0
        for b in readers.epoch_batches(it, batch_size, epoch, seed, buffer_batches):
            n += 1
            yield b
        epoch += 1
        if n == 0:
            return


def dann_fn(config: dict) -> dict:
    """Per-worker DANN loop: source CE on h(g(x)) + reversed domain BCE on D'(GRL(g(x)))."""
    import ray.train
    import ray.train.torch

    spec: DannSpec = config["spec"]
    rank, device, model = fit.classifier_worker(spec.model_uri, spec.cpus, spec.seed)
    d, dcfg, seed = spec.discriminate, spec.data, spec.seed
    net = domain.DANN(model, domain.Discriminator(model.head.in_features, d.hidden))
    # called as a whole: DDP syncs every gradient
    net = ray.train.torch.prepare_model(net, move_to_device=device)
    inner = loops.unwrap(net)
    opt = torch.optim.AdamW(net.parameters(), lr=d.dann_lr, weight_decay=1e-4)
    start, history = 0, []
    restored = train.restore()
    if restored is not None:
        state, rmeta = restored
        inner.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        start, history = rmeta["epoch"] + 1, rmeta["history"]
    bs = dcfg.batch_size
    src_it = ray.train.get_dataset_shard("source")
    tgt = _cycle(ray.train.get_dataset_shard("target"), bs, seed + 1, dcfg.shuffle_buffer)
    steps_per_epoch = max(1, spec.source_steps)
    gen = torch.Generator().manual_seed(seed + rank)
    aug = builders.augment(spec.pretrain)
    for epoch in range(start, d.dann_epochs):
        t0 = time.time()
        loops.train_mode(net)
        sums = {"cls": 0.0, "dom": 0.0, "acc": 0.0, "n": 0, "dom_acc": 0.0}
        for step, b in enumerate(readers.epoch_batches(src_it, bs, epoch, seed,
                                                    dcfg.shuffle_buffer)):
            t = next(tgt)
            progress = (epoch * steps_per_epoch + step) / (d.dann_epochs * steps_per_epoch)
            scale = d.dann_weight * domain.dann_scale(min(progress, 1.0))
            xs = loops.augment(loops.to_input(b["image"], device), aug, gen)
            xt = loops.augment(loops.to_input(t["image"], device), aug, gen)
            ys = torch.tensor(b["label"]).long().to(device)
            with loops.autocast(device):
                logits, dom = net(torch.cat([xs, xt]), len(xs), scale)
            logits, dom = logits.float(), dom.float()
            dom_y = torch.cat([torch.zeros(len(xs)), torch.ones(len(xt))]).to(device)
            cls_loss = F.cross_entropy(logits, ys)
            # each domain weighs half whatever the batch sizes
            w = torch.where(dom_y > 0, 0.5 / len(xt), 0.5 / len(xs))
            dom_loss = (F.binary_cross_entropy_with_logits(dom, dom_y, reduction="none")
                        * w).sum()
            loss = cls_loss + dom_loss  # GRL: D descends on dom_loss, g ascends on it
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["cls"] += float(cls_loss) * len(ys)
            sums["dom"] += float(dom_loss) * len(ys)
            sums["acc"] += float((logits.argmax(1) == ys).sum())
            sums["dom_acc"] += float(((dom > 0).float() == dom_y).float().mean()) * len(ys)
            sums["n"] += len(ys)
        n = max(sums["n"], 1)
        metrics = {"epoch": epoch, "class_loss": sums["cls"] / n, "domain_loss": sums["dom"] / n,
                   "source_accuracy": sums["acc"] / n, "domain_accuracy": sums["dom_acc"] / n,
                   "seconds": time.time() - t0}
        history.append(metrics)
        if rank == 0:
            console.detail(f"[dann] epoch {epoch + 1}/{d.dann_epochs}  class loss "
                         f"{metrics['class_loss']:.3f} acc {metrics['source_accuracy']:.3f}  "
                         f"domain loss {metrics['domain_loss']:.3f} acc "
                         f"{metrics['domain_accuracy']:.3f}  ({metrics['seconds']:.1f}s)")
        train.report_epoch(metrics, {"net": loops.cpu_state(net),
                                        "optimizer": opt.state_dict()},
                              {"epoch": epoch, "history": history})
    return {}
