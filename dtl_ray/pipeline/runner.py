"""Runs the stages in order, skips those already done, resumes the rest, writes the report.

`run` reads as its steps: prepare (`preflight`), take the run's lease, list the data, start
Ray, then each stage of the registry in order (skipped when its done-marker exists, refused
when a finished one was made with other settings), then the report and the trackers.
"""

from __future__ import annotations

import time

import yaml

from dtl_ray import console, storage
from dtl_ray.config import PipelineConfig, to_dict
from dtl_ray.contract import registry, results
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import manifests, readers, rejects
from dtl_ray.errors import ConfigError
from dtl_ray.pipeline import fingerprints, lease, preflight, report, tracking
from dtl_ray.raykit import connect

__all__ = ["run", "restart"]


def run(cfg: PipelineConfig, stages: list[str] | None = None,
        restart_from: str | None = None, verbose: bool | None = None) -> dict:
    """Runs the pipeline (or `stages` of it) and writes report.json and report.html.
    `restart_from` first deletes that stage and every later one.

    Raises:
        ConfigError: an unknown stage, a stage whose upstream has not finished, or a finished
            stage made with other settings.
        DataError: problems with the input folders.
    """
    registry.check_names([*(stages or []), *([restart_from] if restart_from else [])])
    wanted = list(stages or registry.NAMES)
    t0 = time.time()
    cfg, env = preflight.prepare(cfg)
    layout = RunLayout.of(cfg.storage, cfg.name)
    if verbose is None:
        verbose = console.verbose_default()
    with lease.Lease(layout.root):  # one run of this name at a time
        left = storage.remove_temp_files(layout.root)
        if left:
            console.say(f"[dtl-ray] removed {left} partly written file(s) a killed run left "
                        "behind")
        if restart_from:
            restart(layout, restart_from)
        fingerprints.check(cfg, layout)
        manifest = _manifest(cfg, layout)  # fails fast, before Ray starts, on bad folders
        if not manifest.counts()["target"].get("test"):
            console.say("[dtl-ray] the target has no test split: the report measures the "
                        "models on target val, which chooses them (optimistic figures)")
        with console.quiet(layout.root, verbose):  # Ray's output in the run's log
            return _run_listed(cfg, layout, wanted, env, t0, manifest)


def restart(layout: RunLayout, stage: str) -> None:
    """Deletes `stage` and every later stage (and, from pretrain, the kept manifest), so the
    run makes them again (the rows they rejected are found again: `rejects`)."""
    later = list(registry.NAMES[registry.NAMES.index(stage):])
    if stage == registry.NAMES[0] and storage.exists(layout.manifest):
        storage.delete(layout.manifest)
    for name in later:
        layout.forget(name)
    storage.delete_tree(storage.join(layout.root, "tensorboard"))  # made again, as they are
    console.say(f"[dtl-ray] restarting from {stage}: removed {', '.join(later)}")


def _manifest(cfg: PipelineConfig, layout: RunLayout) -> manifests.Manifest:
    """The run's manifest: listed afresh until a stage has finished, then kept (so a resumed
    run sees the samples its finished stages saw, and a fixed folder is seen before)."""
    if layout.is_done(registry.NAMES[0]) and storage.exists(layout.manifest):
        return manifests.load(layout)
    return manifests.build(cfg.source.uri, cfg.target.uri, cfg.data.extensions)


def _write_config(cfg: PipelineConfig, layout: RunLayout) -> None:
    """Keeps the config of the first run; warns when a re-run's config differs."""
    path, now = layout.config, to_dict(cfg)
    if storage.exists(path):
        old = yaml.safe_load(storage.read_bytes(path))
        if old != now:
            changed = sorted(k for k in now if old.get(k) != now[k])
            console.say(f"[dtl-ray] note: config sections {changed} differ from the first "
                        "run's; finished stages are kept (delete their folders to redo them)")
        return
    storage.write_bytes(path, yaml.safe_dump(now, sort_keys=False).encode())


def _start(cfg: PipelineConfig, layout: RunLayout, env: dict, manifest: manifests.Manifest
           ) -> tuple[PipelineConfig, tracking.Tracker | None]:
    """Writes the manifest and config, starts (or joins) Ray, opens the rejects ledger and the
    MLflow tracker; returns the config with its Train workers resolved (`auto`)."""
    counts = manifest.counts()
    console.say(f"[dtl-ray] run {layout.root}: classes {manifest.classes}; source "
                f"{counts['source']}; target {counts['target']}")
    manifests.save(manifest, layout)
    if manifest.unreadable_names is not None:  # listed afresh: no stage has read it yet
        rejects.start(layout, manifest.unreadable_names)
    _write_config(cfg, layout)
    connect.ensure_ray(env)
    cfg = preflight.workers(cfg)
    preflight.check_resources(cfg)
    readers.configure_context()
    rejects.open_ledger(layout, cfg.data.max_rejected_fraction, fresh=True)
    tracker = tracking.Tracker(cfg, layout) if cfg.tracking.mlflow else None
    if tracker:
        console.say(f"[dtl-ray] MLflow run {tracker.parent} at {tracker.uri}")
    return cfg, tracker


def _run_listed(cfg: PipelineConfig, layout: RunLayout, wanted: list[str], env: dict,
                t0: float, manifest: manifests.Manifest) -> dict:
    """`run` once the run's data are listed (and the run holds the console)."""
    cfg, tracker = _start(cfg, layout, env, manifest)
    summaries: dict[str, dict] = {}
    listed = rejects.count(layout)
    try:
        for stage in registry.STAGES:
            if layout.is_done(stage.name):
                summaries[stage.name] = layout.summary(stage.name)
                if stage.name in wanted:
                    console.say(f"[dtl-ray] {stage.name}: already done, skipped")
                continue
            if stage.name not in wanted:
                continue
            listed = _run_stage(cfg, layout, stage, summaries, listed)
            if tracker:
                tracker.log_stages(summaries)
    finally:  # a stopped run keeps what its passes found (the next one starts from it)
        rejects.save(layout)
    return _finish(cfg, layout, manifest, summaries, tracker, t0)


def _run_stage(cfg: PipelineConfig, layout: RunLayout, stage: registry.Stage,
               summaries: dict, listed: int) -> int:
    """Runs one stage whose upstream has finished, marks it done; returns the rejected rows
    listed so far (and says how many this stage found)."""
    missing = [s for s in registry.NAMES[:registry.NAMES.index(stage.name)]
               if s not in summaries]
    if missing:
        raise ConfigError(f"stage '{stage.name}' needs {missing} to finish first "
                          f"(run with --stages {','.join(missing + [stage.name])})")
    console.say(f"[dtl-ray] {stage.name}: starting")
    summary = results.to_summary(stage.run(cfg, layout))
    layout.mark_done(stage.name, summary, fingerprints.settings(cfg, stage.name))
    summaries[stage.name] = summary
    console.say(f"[dtl-ray] {stage.name}: done in {summary['seconds']:.1f}s")
    now = rejects.save(layout) or 0
    if now > listed:
        console.say(f"[dtl-ray] {stage.name}: {now - listed} image(s) cannot be decoded and "
                    f"are left out ({now} in all, listed in {layout.rejected})")
    return max(listed, now)


def _finish(cfg: PipelineConfig, layout: RunLayout, manifest: manifests.Manifest,
            summaries: dict, tracker: tracking.Tracker | None, t0: float) -> dict:
    """The report (and the trackers' last entries)."""
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
