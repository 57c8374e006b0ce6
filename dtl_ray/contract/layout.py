"""The run layout: every path under `<storage>/<name>/`, spelled once.

Stages get their inputs and outputs from a `RunLayout`, so renaming a file is a change here,
not a run-time failure in a later stage an hour into a run.

```
<storage>/<name>/
  config.yaml  manifest.parquet  classes.json  rejected.parquet  report.json  report.html  *.png
  pretrain/     model.pt  train/ (Ray Train run)                               _DONE.json
  discriminate/ discriminator.pt  dann_model.pt  train/ adapted/ dann/ (Ray Train runs)
                clusters/part-*.parquet (source train's kinds)
  score/        scores/part-*.parquet
  select/       candidates.parquet
  finetune/     teacher.pt  pseudo_labels.parquet  trials.parquet  models/<arm>.pt
                progress/<trial>.pt (each trial's latest state)  search/ (Tune's, never read)
  evaluate/     predictions.parquet
```
"""

from __future__ import annotations

from dataclasses import dataclass

from dtl_ray import storage
from dtl_ray.contract import registry

__all__ = ["RunLayout", "DONE_MARKER"]

DONE_MARKER = "_DONE.json"


@dataclass(frozen=True)
class RunLayout:
    """Paths (local or s3:// URIs) of one run's files."""

    root: str
    """`<storage>/<name>`."""

    @classmethod
    def of(cls, storage_uri: str, name: str) -> RunLayout:
        return cls(storage.join(storage_uri, name))

    def _at(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    # --- the run's own files ---------------------------------------------------------------
    @property
    def config(self) -> str:
        return self._at("config.yaml")

    @property
    def manifest(self) -> str:
        return self._at("manifest.parquet")

    @property
    def classes(self) -> str:
        return self._at("classes.json")

    @property
    def rejected(self) -> str:
        """Undecodable images with the reason and the pass that found them (`rejects`)."""
        return self._at("rejected.parquet")

    @property
    def report_json(self) -> str:
        return self._at("report.json")

    @property
    def report_html(self) -> str:
        return self._at("report.html")

    def plot(self, file_name: str) -> str:
        """A report picture beside report.html (which links it by `file_name`)."""
        return self._at(file_name)

    # --- stages ----------------------------------------------------------------------------
    def stage(self, name: str) -> str:
        """A stage's folder (`registry.stage` refuses a name that is not a stage's)."""
        return self._at(registry.stage(name).name)

    def done(self, name: str) -> str:
        """A stage's done-marker: written last, after all its outputs."""
        return storage.join(self.stage(name), DONE_MARKER)

    def is_done(self, name: str) -> bool:
        return storage.exists(self.done(name))

    def mark_done(self, name: str, summary: dict, settings: dict | None = None) -> None:
        """Writes the marker: the stage's summary and the settings it was made with."""
        storage.write_json(self.done(name), {"summary": summary, "settings": settings})

    def summary(self, name: str) -> dict:
        """What a finished stage returned (kept in its done-marker)."""
        return storage.read_json(self.done(name))["summary"]

    def settings(self, name: str) -> dict | None:
        """The settings a finished stage was made with (None for markers from before they
        were recorded)."""
        return storage.read_json(self.done(name)).get("settings")

    def forget(self, name: str) -> None:
        """Deletes a stage's folder (outputs, Train/Tune runs, marker) so it runs afresh."""
        storage.delete_tree(self.stage(name))

    def train_run(self, stage: str, run: str = "train") -> tuple[str, str]:
        """(folder, name) of one of a stage's Ray Train runs; it lives in `<stage>/<run>/` and
        has a fixed name, so running the stage again resumes it."""
        if run not in registry.stage(stage).train_runs:
            raise ValueError(f"stage {stage!r} has no Train run {run!r}")
        return self.stage(stage), run

    def finished(self) -> list[str]:
        """The stages that have finished, in pipeline order."""
        return [s for s in registry.NAMES if self.is_done(s)]

    # --- what stages hand over -------------------------------------------------------------
    @property
    def pretrain_model(self) -> str:
        return storage.join(self.stage("pretrain"), "model.pt")

    @property
    def discriminator(self) -> str:
        return storage.join(self.stage("discriminate"), "discriminator.pt")

    @property
    def source_clusters(self) -> str:
        """A folder of Parquet parts: source train's `sample_id` and k-means `cluster`."""
        return storage.join(self.stage("discriminate"), "clusters")

    @property
    def dann_model(self) -> str:
        """The DANN-adapted classifier (adversarial mode or `dann_baseline`)."""
        return storage.join(self.stage("discriminate"), "dann_model.pt")

    def backbone_model(self, adapted: bool) -> str:
        """The classifier later stages start from: the adapted one or the pretrained one."""
        return self.dann_model if adapted else self.pretrain_model

    @property
    def scores(self) -> str:
        """A folder of Parquet parts, one row per input sample."""
        return storage.join(self.stage("score"), "scores")

    @property
    def candidates(self) -> str:
        return storage.join(self.stage("select"), "candidates.parquet")

    @property
    def teacher(self) -> str:
        return storage.join(self.stage("finetune"), "teacher.pt")

    @property
    def pseudo_labels(self) -> str:
        return storage.join(self.stage("finetune"), "pseudo_labels.parquet")

    @property
    def trials(self) -> str:
        return storage.join(self.stage("finetune"), "trials.parquet")

    @property
    def search(self) -> str:
        """The Tune experiment's folder."""
        return storage.join(self.stage("finetune"), "search")

    @property
    def progress(self) -> str:
        """Each fine-tuning trial's latest state and metrics, `<cell>-<setting>.pt`: what an
        interrupted search resumes from (Tune's own experiment state is never read back)."""
        return storage.join(self.stage("finetune"), "progress")

    def model(self, arm: str) -> str:
        """A fine-tuned model: an arm (`method`, a baseline), `cell-<i>` or `label_free`."""
        return storage.join(self.stage("finetune"), "models", f"{arm}.pt")

    @property
    def predictions(self) -> str:
        return storage.join(self.stage("evaluate"), "predictions.parquet")
