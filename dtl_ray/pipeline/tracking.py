"""Experiment tracking: a run's stages and trials in MLflow and in TensorBoard event files.

Everything is logged from the run's own records once its stages have run (their summaries,
each fine-tuning trial's progress file with its per-epoch history, the report and plots), by
the driver, through MLflow's client (`tracking:` config; the server from `tracking.mlflow_uri`
or MLFLOW_TRACKING_URI):

- one parent MLflow run per pipeline run (its config as params, the test accuracies as
  metrics, `report.html`, `report.json` and the plots as artifacts), found again by the run's
  folder on the next invocation (`<run>/tracking.json`): a resumed run logs into the same one;
- a nested run per stage (its summary's figures; pretraining's curve per epoch), made once,
  when the stage has finished;
- a nested run per fine-tuning trial under the finetune stage's run (its cell and settings as
  params, val accuracy and loss per epoch).

Ray Tune's `MLflowLoggerCallback` logs a trial while Tune runs it; here a trial may continue
in a later search from its progress file (a driver killed mid-search, `--restart-from`), and a
callback would give it one MLflow run per search with part of its history each. Logging from
the progress files gives each trial one run with its whole history.

TensorBoard: the same per-epoch figures as event files under `<run>/tensorboard/<stage>/` and
`<run>/tensorboard/finetune/<trial>/` (written with tensorboardX, which Ray Tune brings).
"""

from __future__ import annotations

import os
import tempfile
import time

from dtl_ray import storage
from dtl_ray.config import PipelineConfig, to_dict
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.registry import NAMES
from dtl_ray.errors import ConfigError
from dtl_ray.pipeline.fingerprints import flat
from dtl_ray.storage import parquet

__all__ = ["check", "tracking_uri", "Tracker", "tensorboard"]

EPOCH_METRICS = ("train_loss", "val_accuracy", "val_loss", "seconds")
"""Per-epoch figures of a stage's curve or a trial's history (those that are there)."""


def tracking_uri(cfg: PipelineConfig) -> str | None:
    return cfg.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def check(cfg: PipelineConfig) -> None:
    """With `tracking.mlflow`, a tracking URI and MLflow's client are there (before anything
    runs)."""
    if not cfg.tracking.mlflow:
        return
    if not tracking_uri(cfg):
        raise ConfigError("config key 'tracking.mlflow' is true but there is no tracking "
                          "server: set 'tracking.mlflow_uri' or MLFLOW_TRACKING_URI")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("config key 'tracking.mlflow' needs MLflow: pip install "
                          "'dtl-ray[tracking]'") from None


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a summary, flattened (`a.b`); lists and strings left out."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, (int, float)) and v == v:  # (not NaN)
            out[key] = float(v)
        elif isinstance(v, dict):
            out.update(_numbers(v, key + "."))
    return out


def _safe_key(key: str) -> str:
    """MLflow keys take letters, digits, `_ - . / :` and spaces."""
    return "".join(c if c.isalnum() or c in "_-./: " else "_" for c in key)[:250]


def _trial_histories(layout: RunLayout, done=lambda row: False) -> list[tuple[dict, list[dict]]]:
    """(trial row, per-epoch history) of every finished trial that is not `done(row)` (logged
    already), from the trial table and the trials' progress files (each holds the trial's
    weights too: only the ones needed are read)."""
    from dtl_ray.storage import checkpoints

    if not storage.exists(layout.trials):
        return []
    table = parquet.read_df(layout.trials)
    out = []
    for row in table.to_dict("records"):
        if done(row):
            continue
        uri = storage.join(layout.progress, f"{row['key']}.pt")
        history = []
        if storage.exists(uri):
            _, meta = checkpoints.load(uri)
            history = list(meta.get("history", []))
        out.append((row, history))
    return out


def _stage_curve(stage: str, summary: dict) -> list[dict]:
    if stage == "pretrain":
        return list(summary.get("curve", []))
    return []


class Tracker:
    """The run's MLflow parent run (made, or found again through `<run>/tracking.json`)."""

    def __init__(self, cfg: PipelineConfig, layout: RunLayout):
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.layout = layout
        self.file = storage.join(layout.root, "tracking.json")
        self.ids = storage.read_json(self.file) if storage.exists(self.file) else {}
        if self.ids.get("tracking_uri") != self.uri:  # another server: start over there
            self.ids = {"tracking_uri": self.uri}
        exp = self.client.get_experiment_by_name(cfg.tracking.experiment)
        self.experiment_id = (exp.experiment_id if exp is not None else
                              self.client.create_experiment(cfg.tracking.experiment))
        if "parent" not in self.ids:
            run = self.client.create_run(self.experiment_id, run_name=cfg.name, tags={
                "dtl_ray.run": layout.root})
            self.ids["parent"] = run.info.run_id
            params = {_safe_key(k): str(v)[:500]
                      for k, v in flat(to_dict(cfg)).items() if v is not None}
            self._log(run.info.run_id, params=params)
            self._save()

    @property
    def parent(self) -> str:
        return self.ids["parent"]

    def url(self) -> str | None:
        """The parent run's page, when the server is an HTTP one."""
        if not self.uri.startswith(("http://", "https://")):
            return None
        return (f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/"
                f"{self.parent}")

    def nested(self) -> int:
        return sum(k.startswith(("stage/", "trial/")) for k in self.ids)

    def _save(self) -> None:
        storage.write_json(self.file, self.ids)

    def _log(self, run_id: str, params: dict | None = None, metrics: dict | None = None,
             steps: list[dict] | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ms = [Metric(_safe_key(k), v, now, 0) for k, v in (metrics or {}).items()]
        for i, epoch in enumerate(steps or []):
            step = int(epoch.get("epoch", i))
            ms += [Metric(k, float(epoch[k]), now, step) for k in EPOCH_METRICS
                   if isinstance(epoch.get(k), (int, float))]
        ps = [Param(k, v) for k, v in (params or {}).items()]
        for i in range(0, len(ps), 100):  # MLflow's limits per request
            self.client.log_batch(run_id, params=ps[i:i + 100])
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i:i + 1000])

    def _child(self, key: str, name: str, parent: str, params: dict | None,
               metrics: dict, steps: list[dict]) -> str:
        """A nested run, made once (its id kept under `key`)."""
        if key in self.ids:
            return self.ids[key]
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": parent, "dtl_ray.run": self.layout.root})
        self._log(run.info.run_id, params=params, metrics=metrics, steps=steps)
        self.client.set_terminated(run.info.run_id)
        self.ids[key] = run.info.run_id
        self._save()
        return run.info.run_id

    def log_stages(self, summaries: dict) -> int:
        """A nested run per finished stage, and per trial under the finetune stage's; returns
        how many runs were made now."""
        before = len(self.ids)
        for stage in NAMES:
            if stage not in summaries:
                continue
            s = summaries[stage]
            run_id = self._child(f"stage/{stage}", stage, self.parent, None,
                                 _numbers(s), _stage_curve(stage, s))
            if stage == "finetune":
                logged = lambda row: f"trial/{row['trial_id']}" in self.ids  # noqa: E731
                for row, history in _trial_histories(self.layout, logged):
                    params = {k: str(row[k]) for k in ("arm", "strategy", "source_fraction",
                                                       "target_fraction", "lr",
                                                       "train_layers", "candidate_weight")
                              if k in row}
                    best = {k: float(row[k]) for k in ("best_val_accuracy", "best_val_loss",
                                                       "best_epoch", "epochs_run")
                            if k in row and row[k] == row[k]}
                    self._child(f"trial/{row['trial_id']}", f"trial {row['key']}", run_id,
                                params, best, history)
        return len(self.ids) - before

    def finish(self, doc: dict) -> None:
        """The run's headline figures and its report and plots as artifacts."""
        ev = doc.get("evaluate", {})
        metrics = {}
        if ev.get("method"):
            metrics["method.target_test_accuracy"] = ev["method"]["target_test_accuracy"]
        for name, v in ev.get("baselines", {}).items():
            metrics[f"{name}.target_test_accuracy"] = v["target_test_accuracy"]
        self._log(self.parent, metrics=metrics)
        with tempfile.TemporaryDirectory() as tmp:
            names = ["report.html", "report.json"] + [
                n for n, _ in storage.list_files(self.layout.root)
                if n.endswith(".png") and "/" not in n]
            for name in names:
                uri = storage.join(self.layout.root, name)
                if storage.exists(uri):
                    local = os.path.join(tmp, name)
                    with open(local, "wb") as f:
                        f.write(storage.read_bytes(uri))
                    self.client.log_artifact(self.parent, local)
        if ev:
            self.client.set_terminated(self.parent)


def tensorboard(layout: RunLayout, summaries: dict) -> int:
    """Event files of the per-epoch figures under `<run>/tensorboard/` (written locally, then
    copied when the run lives in object storage), for the stages and trials that have none
    yet (`pipeline.restart` deletes them with the stages). Returns how many files."""
    from tensorboardX import SummaryWriter

    out = storage.join(layout.root, "tensorboard")
    have = {rel.rsplit("/", 1)[0] for rel, _ in storage.list_files(out)}

    logs = []
    for stage in NAMES:
        if (stage in summaries and stage not in have
                and _stage_curve(stage, summaries[stage])):
            logs.append((stage, _stage_curve(stage, summaries[stage])))
    if "finetune" in summaries:
        logs += [(f"finetune/{row['key']}", history) for row, history in _trial_histories(
            layout, lambda row: f"finetune/{row['key']}" in have) if history]
    if not logs:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, steps in logs:
            w = SummaryWriter(logdir=os.path.join(tmp, name), flush_secs=1)
            for i, epoch in enumerate(steps):
                step = int(epoch.get("epoch", i))
                for k in EPOCH_METRICS:
                    if isinstance(epoch.get(k), (int, float)):
                        w.add_scalar(k, float(epoch[k]), step)
            w.close()
        files = 0
        for dirpath, _, names in os.walk(tmp):
            for n in names:
                local = os.path.join(dirpath, n)
                rel = os.path.relpath(local, tmp).replace(os.sep, "/")
                with open(local, "rb") as f:
                    storage.write_bytes(storage.join(out, rel), f.read())
                files += 1
    return files
