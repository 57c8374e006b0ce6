"""Runs the stages in order, skips those already done, resumes the rest, writes the report."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import yaml

from dtl_ray import console, storage
from dtl_ray.config import ConfigError, PipelineConfig, to_dict
from dtl_ray.contract import results
from dtl_ray.contract.layout import STAGES, RunLayout
from dtl_ray.data import readers, rejects
from dtl_ray.pipeline import fingerprints, lease, report, tracking

__all__ = ["STAGES", "run", "ensure_ray", "run_layout"]


def _stage_runs() -> dict:
    """Each stage's call, in pipeline order: the config sections it reads, nothing more."""
    from dtl_ray.stages import discriminate, evaluate, finetune, pretrain, score, select

    return {
        "pretrain": lambda c, lay: pretrain.run(lay, c.model, c.data, c.pretrain, c.scaling,
                                                c.seed),
        "discriminate": lambda c, lay: discriminate.run(lay, c.discriminate, c.model, c.data,
                                                        c.pretrain, c.scaling, c.seed),
        "score": lambda c, lay: score.run(lay, c.score, c.scaling, c.model.frame,
                                          c.data.max_image_pixels, c.data.max_rejected_fraction,
                                          adapted=c.discriminate.mode == "adversarial"),
        "select": lambda c, lay: select.run(lay, c.select),
        "finetune": lambda c, lay: finetune.run(lay, c.finetune, c.select, c.model, c.pretrain,
                                                c.scaling, c.data, c.score, c.seed),
        "evaluate": lambda c, lay: evaluate.run(lay, c.scaling, c.model.frame,
                                                c.data.max_image_pixels, c.score.batch_size),
    }


def run_layout(cfg: PipelineConfig) -> RunLayout:
    return RunLayout.of(cfg.storage, cfg.name)


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
        models.ModelError: a name the backbone does not have.
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


def ensure_ray(env: dict[str, str] | None = None) -> None:
    """Connects to RAY_ADDRESS if set, else starts a local Ray (dashboard on 127.0.0.1).

    `env` (S3 endpoint and region, never secrets) reaches every worker of this job, and every
    worker knows its own cluster's address (`rayenv`).
    """
    import ray

    from dtl_ray.raykit import connect

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {} if address else {"dashboard_host": "127.0.0.1"}
    kwargs["runtime_env"] = connect.runtime_env(env)
    # "local": never attach by accident to another cluster started on this machine
    ray.init(address=address or "local", logging_level=logging.WARNING, **kwargs)


def check_uris(cfg: PipelineConfig) -> None:
    """Every URI is reachable (and storage writable) before anything starts."""
    from dtl_ray.method import models

    storage.check_access(cfg.source.uri)
    storage.check_access(cfg.target.uri)
    storage.check_access(cfg.storage, write=True)
    if cfg.model.weights and not models.is_weights_name(cfg.model.weights):
        storage.check_access(cfg.model.weights)


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


def _write_config(cfg: PipelineConfig, layout: RunLayout) -> None:
    """Keeps the config of the first run; warns when a re-run's config differs."""
    path = layout.config
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if storage.exists(path):
        old = yaml.safe_load(storage.read_bytes(path))
        if old != to_dict(cfg):
            changed = sorted(k for k in to_dict(cfg) if old.get(k) != to_dict(cfg)[k])
            console.say(f"[dtl-ray] note: config sections {changed} differ from the first "
                        "run's; finished stages are kept (delete their folders to redo them)")
        return
    storage.write_bytes(path, text.encode())


def _manifest(cfg: PipelineConfig, layout: RunLayout) -> readers.Manifest:
    """The run's manifest: listed afresh until a stage has finished, then kept (so a resumed
    run sees the samples its finished stages saw, and a fixed folder is seen before)."""
    if layout.is_done(STAGES[0]) and storage.exists(layout.manifest):
        return readers.load_manifest(layout)
    return readers.build_manifest(cfg.source.uri, cfg.target.uri, cfg.data.extensions)


def preflight(cfg: PipelineConfig) -> None:
    """Builds the model once on the driver: unknown backbones, bad weights files, unknown
    layers and image sizes the backbone cannot take fail here, before anything is written."""
    import torch

    from dtl_ray.method import builders, models

    model = builders.classifier(cfg.model, 2)
    x = torch.rand(2, 3, cfg.model.image_size, cfg.model.image_size)
    tap = models.FeatureTap(model.backbone, cfg.discriminate.layer)
    try:
        with torch.no_grad():
            for train in (True, False):  # some models differ by mode (aux heads, dropout)
                out = model.train(train)(x)
                if not isinstance(out, torch.Tensor) or out.shape != (2, 2):
                    raise TypeError(f"its forward returns {type(out).__name__}, not logits")
            tap(x)
    except (RuntimeError, AssertionError, ValueError, TypeError) as e:
        raise models.ModelError(f"model.backbone {cfg.model.backbone} cannot take "
                                f"model.image_size {cfg.model.image_size}: "
                                f"{str(e).splitlines()[0][:160]}") from None


def check_settings(cfg: PipelineConfig, layout: RunLayout) -> None:
    """Refuses to reuse a finished stage made with other settings (see `fingerprints`)."""
    for name in STAGES:
        if not layout.is_done(name):
            continue
        old = layout.settings(name)
        if old is None:  # a marker from before settings were recorded: nothing to compare
            continue
        changed = fingerprints.changes(old, fingerprints.settings(cfg, name))
        if changed:
            shown = "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")
            raise ConfigError(f"stage '{name}' of run {layout.root} finished with other "
                              f"settings ({shown}): run with --restart-from {name} to make it "
                              "and every later stage again, or choose another name")


def restart(layout: RunLayout, stage: str) -> None:
    """Deletes `stage` and every later stage (and, from pretrain, the kept manifest), so the
    run makes them again (the rows they rejected are found again: `rejects`)."""
    later = list(STAGES[STAGES.index(stage):])
    if stage == STAGES[0]:
        if storage.exists(layout.manifest):
            storage.delete(layout.manifest)
    for name in later:
        layout.forget(name)
    storage.delete_tree(storage.join(layout.root, "tensorboard"))  # made again, as they are
    console.say(f"[dtl-ray] restarting from {stage}: removed {', '.join(later)}")


def _check_stages(stages: list[str] | None, restart_from: str | None) -> list[str]:
    wanted = stages or STAGES
    unknown = [s for s in [*wanted, *([restart_from] if restart_from else [])]
               if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}: choose from {STAGES}")
    return wanted


def check(cfg: PipelineConfig, stages: list[str] | None = None,
          restart_from: str | None = None) -> dict:
    """Everything `run` checks before it writes or starts Ray (stages, URIs, storage, the
    model on the driver, the data folders' layout); returns the image counts.

    Raises: what `run` raises for those (ConfigError, DataError, ModelError, StorageError).
    """
    _check_stages(stages, restart_from)
    cfg = absolute(cfg)
    storage.configure_s3(cfg.s3.endpoint_url, cfg.s3.region)
    cfg = resolve_weights(cfg, download=False)
    check_uris(cfg)
    tracking.check(cfg)
    preflight(cfg)
    manifest = readers.build_manifest(cfg.source.uri, cfg.target.uri, cfg.data.extensions)
    names = manifest.unreadable_names
    return {**manifest.counts(), "unreadable_names": 0 if names is None else len(names)}


def run(cfg: PipelineConfig, stages: list[str] | None = None,
        restart_from: str | None = None, verbose: bool | None = None) -> dict:
    """Runs the pipeline (or `stages` of it) and writes report.json and report.html.
    `restart_from` first deletes that stage and every later one.

    Raises:
        ConfigError: an unknown stage, a stage whose upstream has not finished, or a finished
            stage made with other settings.
        samples.DataError: problems with the input folders.
    """
    wanted = _check_stages(stages, restart_from)
    t0 = time.time()
    cfg = absolute(cfg)
    env = storage.configure_s3(cfg.s3.endpoint_url, cfg.s3.region)
    check_uris(cfg)
    cfg = resolve_weights(cfg)
    if cfg.model.weights is None:
        console.say("[dtl-ray] no pretrained weights: inputs normalised with ImageNet's fixed "
                    "mean/std")
    tracking.check(cfg)
    preflight(cfg)
    layout = run_layout(cfg)
    if verbose is None:
        verbose = console.verbose_default()
    with lease.Lease(layout.root):  # one run of this name at a time
        return _run_held(cfg, layout, wanted, restart_from, env, t0, verbose)


def _run_held(cfg: PipelineConfig, layout: RunLayout, wanted, restart_from: str | None,
              env: dict, t0: float, verbose: bool) -> dict:
    """`run` once the run's lease is held."""
    left = storage.remove_temp_files(layout.root)
    if left:
        console.say(f"[dtl-ray] removed {left} partly written file(s) a killed run left "
                    "behind")
    if restart_from:
        restart(layout, restart_from)
    check_settings(cfg, layout)
    manifest = _manifest(cfg, layout)  # fails fast, before Ray starts, on bad folders
    with console.quiet(layout.root, verbose):  # Ray's output in the run's log unless verbose
        return _run_listed(cfg, layout, wanted, env, t0, manifest)


def _run_listed(cfg: PipelineConfig, layout: RunLayout, wanted, env: dict, t0: float,
                manifest: readers.Manifest) -> dict:
    """`run` once the run's data are listed (and the run holds the console)."""
    counts = manifest.counts()
    console.say(f"[dtl-ray] run {layout.root}: classes {manifest.classes}; source "
                f"{counts['source']}; target {counts['target']}")
    readers.save_manifest(manifest, layout)
    if manifest.unreadable_names is not None:  # listed afresh: no stage has read it yet
        rejects.start(layout, manifest.unreadable_names)
    _write_config(cfg, layout)
    ensure_ray(env)
    check_resources(cfg)
    readers.configure_context()
    rejects.open_ledger(layout, cfg.data.max_rejected_fraction, fresh=True)
    tracker = tracking.Tracker(cfg, layout) if cfg.tracking.mlflow else None
    if tracker:
        console.say(f"[dtl-ray] MLflow run {tracker.parent} at {tracker.uri}")
    summaries: dict[str, dict] = {}
    stage_runs = _stage_runs()
    listed = rejects.count(layout)
    try:
        for name in STAGES:
            if layout.is_done(name):
                summaries[name] = layout.summary(name)
                if name in wanted:
                    console.say(f"[dtl-ray] {name}: already done, skipped")
                continue
            if name not in wanted:
                continue
            missing = [s for s in STAGES[:STAGES.index(name)] if s not in summaries]
            if missing:
                raise ConfigError(f"stage '{name}' needs {missing} to finish first "
                                  f"(run with --stages {','.join(missing + [name])})")
            console.say(f"[dtl-ray] {name}: starting")
            summaries[name] = results.to_summary(stage_runs[name](cfg, layout))
            layout.mark_done(name, summaries[name], fingerprints.settings(cfg, name))
            console.say(f"[dtl-ray] {name}: done in {summaries[name]['seconds']:.1f}s")
            now = rejects.save(layout) or 0
            if now > listed:
                console.say(f"[dtl-ray] {name}: {now - listed} image(s) cannot be decoded and "
                            f"are left out ({now} in all, listed in {layout.rejected})")
            listed = max(listed, now)
            if tracker:
                tracker.log_stages(summaries)
    finally:  # a stopped run keeps what its passes found (the next one starts from it)
        rejects.save(layout)
    doc = report.build(cfg, manifest, summaries, time.time() - t0)
    doc["data"]["rejected"] = rejects.count(layout)
    if tracker:
        tracker.log_stages(summaries)  # (stages finished before this invocation too)
        doc["tracking"] = {"mlflow_run_id": tracker.parent, "mlflow_url": tracker.url()}
    report.write(doc, layout)
    if tracker:
        tracker.finish(doc)
        console.say(f"[dtl-ray] MLflow: {tracker.url() or tracker.parent} "
                    f"({tracker.nested()} nested runs: stages and trials)")
    if cfg.tracking.tensorboard:
        tracking.tensorboard(layout, summaries)
    console.say(f"[dtl-ray] report: {layout.report_html}")
    return doc
