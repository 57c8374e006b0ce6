"""What a run checks before it writes anything or starts Ray, and how it resolves its config.

`prepare` is shared by `runner.run` and `check` (`dtl-ray run --check`): local paths made
absolute, every URI reachable and storage writable, torchvision weights given by name resolved
(and downloaded once, by the driver), the tracking server reachable, and the model built once
on the driver (unknown backbones, layers, sizes and bad weights files fail here). What needs a
Ray cluster (`check_resources`) runs once Ray is up.
"""

from __future__ import annotations

import dataclasses
import os

from dtl_ray import console, storage
from dtl_ray.config import PipelineConfig
from dtl_ray.contract import registry
from dtl_ray.data import manifests
from dtl_ray.errors import ConfigError, ModelError
from dtl_ray.pipeline import tracking

__all__ = ["prepare", "check", "check_machine", "absolute", "resolve_weights", "weights_file",
           "workers", "check_resources"]


def prepare(cfg: PipelineConfig, download: bool = True) -> tuple[PipelineConfig, dict]:
    """Everything a run checks and resolves before it writes anything or starts Ray; returns
    the resolved config and the S3 environment its workers get. Without `download` (`--check`)
    a weights name is only checked.

    Raises:
        ConfigError, DataError, ModelError, StorageError: one line naming what to fix.
    """
    cfg = absolute(cfg)
    env = storage.configure_s3(cfg.s3.endpoint_url, cfg.s3.region)
    check_uris(cfg)
    cfg = resolve_weights(cfg, download)
    if download and cfg.model.weights is None:
        console.say("[dtl-ray] no pretrained weights: inputs normalised with ImageNet's fixed "
                    "mean/std")
    tracking.check(cfg)
    build_model(cfg)
    return cfg, env


def check(cfg: PipelineConfig, stages: list[str] | None = None,
          restart_from: str | None = None) -> dict:
    """What `run` checks before it writes or starts Ray (stages, URIs, storage, the model on
    the driver, the data folders' layout); returns the image counts.

    Raises: what `run` raises for those (ConfigError, DataError, ModelError, StorageError).
    """
    registry.check_names([*(stages or []), *([restart_from] if restart_from else [])])
    cfg, _ = prepare(cfg, download=False)
    if not os.environ.get("RAY_ADDRESS"):  # the run would start a Ray on this machine
        check_machine(cfg)
    manifest = manifests.build(cfg.source.uri, cfg.target.uri, cfg.data.extensions)
    names = manifest.unreadable_names
    return {**manifest.counts(), "unreadable_names": 0 if names is None else len(names)}


def check_machine(cfg: PipelineConfig) -> None:
    """What `check_resources` will ask of the local Ray a run starts here, asked of this
    machine without starting it: its GPUs (torch's CUDA devices) and its CPUs.

    Raises:
        ConfigError: naming the key to change.
    """
    import torch

    s = cfg.scaling
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    workers = s.num_workers if isinstance(s.num_workers, int) else max(1, gpus)
    if s.use_gpu and gpus < workers:
        raise ConfigError(
            f"scaling.use_gpu=true asks for {workers} GPU(s) (scaling.num_workers="
            f"{s.num_workers}) but this machine has {gpus} and no cluster is given "
            "(RAY_ADDRESS is not set): set scaling.use_gpu=false, or RAY_ADDRESS to a cluster "
            "with GPU nodes")
    cpus = os.cpu_count() or 1
    if s.cpus_per_worker > cpus:
        raise ConfigError(f"scaling.cpus_per_worker={s.cpus_per_worker} but this machine has "
                          f"{cpus} CPUs and no cluster is given (RAY_ADDRESS is not set)")
    if isinstance(s.num_workers, int):
        _leave_a_reader(s.num_workers, s.cpus_per_worker, cpus, "of this machine")


def _leave_a_reader(workers: int, cpus_per_worker: int, cpus: int, where: str) -> None:
    """The Train workers must leave a CPU to the Ray Data tasks that read, decode and shuffle
    their images: with every CPU held by a worker those tasks never start and the stage
    waits forever (`make perf` hung so)."""
    if workers * cpus_per_worker >= cpus:
        raise ConfigError(
            f"scaling.num_workers={workers} x scaling.cpus_per_worker={cpus_per_worker} Train "
            f"worker CPUs take all {cpus} CPUs {where} "
            "and leave none to read their images (the stage would wait forever): lower "
            "scaling.cpus_per_worker or scaling.num_workers (`auto` leaves one)")


def absolute(cfg: PipelineConfig) -> PipelineConfig:
    """Local paths made absolute: Ray workers do not share the driver's working directory."""
    from dtl_ray.method import models

    def fix(uri: str | None) -> str | None:
        return None if uri is None else (storage.local_path(uri) or uri)

    weights = cfg.model.weights  # a torchvision weights name is not a path
    return dataclasses.replace(
        cfg, storage=fix(cfg.storage),
        source=dataclasses.replace(cfg.source, uri=fix(cfg.source.uri)),
        target=dataclasses.replace(cfg.target, uri=fix(cfg.target.uri)),
        model=dataclasses.replace(cfg.model, weights=weights if models.is_weights_name(weights)
                                  else fix(weights)))


def weights_file(cfg: PipelineConfig) -> str:
    """Where a run keeps the torchvision weights it was given by name (every worker of every
    node reads them there; the download happens once, on the driver)."""
    return storage.join(cfg.storage, cfg.name, "weights", f"{cfg.model.weights}.pth")


def resolve_weights(cfg: PipelineConfig, download: bool = True) -> PipelineConfig:
    """`model.weights` given as a torchvision weights name (`IMAGENET1K_V1`, `DEFAULT`,
    `ResNet18_Weights.IMAGENET1K_V1`): resolved with torchvision's weights API, downloaded
    once here (torchvision's own download, into torch's hub cache) and saved in the run's
    folder, which the config then names. A file is left as it is. Without `download`
    (`--check`), only the name is checked.

    Raises:
        ModelError: a name the backbone does not have.
    """
    from dtl_ray.method import models

    name = cfg.model.weights
    if not models.is_weights_name(name) or (storage.local_path(name) and storage.exists(
            storage.local_path(name))):
        return cfg
    weights = models.named_weights(cfg.model.backbone, name)
    t = weights.transforms()
    resize = cfg.model.resize_size
    if resize is None:  # the weights' own resize-then-crop, at the run's image size
        resize = max(cfg.model.image_size, int(round(
            cfg.model.image_size * t.resize_size[0] / t.crop_size[0])))
    uri = weights_file(cfg)
    if download and not storage.exists(uri):
        import io

        import torch

        state = weights.get_state_dict(progress=False)
        buf = io.BytesIO()
        torch.save(state, buf)
        storage.write_bytes(uri, buf.getvalue())
    if download:
        size = cfg.model.image_size
        console.say(f"[dtl-ray] model.weights {name}: torchvision's {weights} (in {uri}); "
                    f"inputs normalised with its mean/std (ImageNet's); every image's shorter "
                    f"side resized to {resize} px and its centre {size} x {size} px cropped "
                    f"(the weights' transforms: {t.resize_size[0]} then {t.crop_size[0]} px"
                    + ("" if size == t.crop_size[0] else
                       f"; model.image_size={t.crop_size[0]} is what they were trained on")
                    + ")")
    return dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, weights=uri if download else None, resize_size=resize))


def check_uris(cfg: PipelineConfig) -> None:
    """Every URI is reachable (and storage writable) before anything starts."""
    from dtl_ray.method import models

    storage.check_access(cfg.source.uri)
    storage.check_access(cfg.target.uri)
    storage.check_access(cfg.storage, write=True)
    if cfg.model.weights and not models.is_weights_name(cfg.model.weights):
        storage.check_access(cfg.model.weights)


def workers(cfg: PipelineConfig) -> PipelineConfig:
    """`cfg` with `scaling.num_workers: auto` resolved on the cluster Ray is connected to:
    every GPU its nodes and its autoscaler offer (with `use_gpu`; the GPUs now, at least one,
    when an autoscaler does not say how many it may add), else its CPUs but one, over
    `cpus_per_worker`."""
    from dataclasses import replace

    import ray

    from dtl_ray.raykit import capacity

    s = cfg.scaling
    if s.num_workers != "auto":
        return cfg
    kind = "GPU" if s.use_gpu else "CPU"
    most = capacity.most(kind)
    total = most if most is not None else int(ray.cluster_resources().get(kind, 0))
    n = max(1, total if s.use_gpu else (total - 1) // s.cpus_per_worker)
    console.say(f"[dtl-ray] scaling.num_workers auto: {n} Train worker(s) ({total} {kind}s "
                "in the cluster and what its autoscaler can add)")
    return replace(cfg, scaling=replace(s, num_workers=n))


def check_resources(cfg: PipelineConfig) -> None:
    """Every resource request of the run fits some node, now or once the autoscaler adds it
    (a request no node can hold waits forever); with scaling.use_gpu, the cluster has (or can
    get) a GPU for each Train worker. One line now instead of a run that waits.

    Raises:
        ConfigError: naming the key to change.
    """
    from dtl_ray.raykit import capacity

    s = cfg.scaling
    request = {"CPU": s.cpus_per_worker, "GPU": 1 if s.use_gpu else 0}
    if s.use_gpu:
        need, most = s.num_workers, capacity.most("GPU")
        if most is not None and most < need:
            raise ConfigError(
                f"scaling.use_gpu=true needs {need} GPU(s) (one per Train worker, "
                f"scaling.num_workers={need}); the cluster can hold {most} (its nodes and what its "
                f"autoscaler can add): set "
                "scaling.use_gpu=false or give the cluster GPU nodes")
    if not capacity.fits(request):
        what = " and 1 GPU" if s.use_gpu else ""
        raise ConfigError(
            f"each Train worker, scoring actor and trial asks for {s.cpus_per_worker} CPU(s)"
            f"{what} (scaling.cpus_per_worker={s.cpus_per_worker}) but no node of the cluster "
            "(nor any node type its autoscaler can add) has that much: lower "
            "scaling.cpus_per_worker or add larger nodes")
    cpus = capacity.most("CPU")
    if cpus is not None:
        _leave_a_reader(s.num_workers, s.cpus_per_worker, cpus, "that the cluster can hold")


def build_model(cfg: PipelineConfig) -> None:
    """Builds the model once on the driver: unknown backbones, bad weights files, unknown
    layers and image sizes the backbone cannot take fail here, before anything is written."""
    import torch

    from dtl_ray.method import builders, domain

    model = builders.classifier(cfg.model, 2)
    x = torch.rand(2, 3, cfg.model.image_size, cfg.model.image_size)
    tap = domain.FeatureTap(model.backbone, cfg.discriminate.layer)
    try:
        with torch.no_grad():
            for train in (True, False):  # some models differ by mode (aux heads, dropout)
                out = model.train(train)(x)
                if not isinstance(out, torch.Tensor) or out.shape != (2, 2):
                    raise TypeError(f"its forward returns {type(out).__name__}, not logits")
            tap(x)
    except (RuntimeError, AssertionError, ValueError, TypeError) as e:
        raise ModelError(f"model.backbone {cfg.model.backbone} cannot take "
                                f"model.image_size {cfg.model.image_size}: "
                                f"{str(e).splitlines()[0][:160]}") from None
