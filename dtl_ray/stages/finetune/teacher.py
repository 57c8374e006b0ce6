"""The teacher and its pseudo-labels: a model fitted on the labeled target plus the selected
source candidates, which then labels the unlabeled target pool (an actor pool, as the score
stage scores) for the cells that draw on it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from dtl_ray import console, storage
from dtl_ray.config import ModelConfig, ScoreConfig
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data.samples import SAMPLE_ID
from dtl_ray.errors import DataError
from dtl_ray.method import batches, design, loops, target_fit
from dtl_ray.stages.finetune.inputs import cell_inputs, fit_cell
from dtl_ray.stages.finetune.specs import SearchSetup
from dtl_ray.stages.finetune.trial import fit_on_train, save_state, trial_spec
from dtl_ray.storage import checkpoints, parquet

__all__ = ["fit", "pseudo_labels"]


def _fit_to_end(setup: SearchSetup, members: pd.DataFrame, rows: pd.DataFrame,
                unlabeled: pd.DataFrame, settings: target_fit.Settings, out_uri: str) -> None:
    """Fits the teacher to the end (a Ray task, or a TorchTrainer with
    `finetune.teacher_workers`); its best state goes to `out_uri`."""
    f = setup.finetune
    spec = dataclasses.replace(trial_spec(setup, -1, 0, settings), keep_state=out_uri,
                               source_val_rows=setup.source_val_rows.iloc[:0])
    inputs = cell_inputs(members, rows, spec, unlabeled)
    if f.teacher_workers > 0:
        fit_on_train(spec, inputs, f.teacher_workers, setup, "teacher", in_tune=False)
        return
    loops.set_threads(setup.scaling.cpus_per_worker)
    last = None
    for _metrics, last in fit_cell(spec, inputs, loops.local_device(setup.scaling.use_gpu)):  # noqa: B007
        pass
    save_state(out_uri, last)


def fit(setup: SearchSetup, layout: RunLayout, model: ModelConfig, rows: pd.DataFrame,
        labeled: pd.DataFrame, scores: pd.DataFrame, local: dict,
        unlabeled: pd.DataFrame) -> dict:
    """Fits the teacher on labeled target + the selected source candidates (with the
    consistency term on the `unlabeled` pool's rows when it is on), its epochs a pass over
    its own data by the search's rule (`batches.epoch_lengths`); saves it as
    `layout.teacher` and returns its best state (`val_accuracy`, `epoch`, `model`).
    `rows`: the manifest's."""
    import ray

    f, scaling, seed = setup.finetune, setup.scaling, setup.seed
    cand = parquet.read_df(layout.candidates)
    src_cand = scores[scores[SAMPLE_ID].isin(cand.loc[cand["pool"] == "source", SAMPLE_ID])]
    no_target = scores.iloc[:0].assign(pred=[])
    members = design.members_table(labeled, src_cand, no_target, local, False)
    all_source, _ = design.members(design.Cell("all_source", "all", 1.0, 0.0), scores,
                                   scores.iloc[:0], setup.classes, seed, 0.0)
    budget = design.members_table(labeled, all_source, no_target, local, False)
    cons = setup.consistency if len(unlabeled) else None
    pool = -(-len(unlabeled) // f.unlabeled_ratio) if cons else 0
    # its own data's pass, by the search's rule (the all-source cell: the longest pass)
    own, longest = (batches.one_pass(design.as_train_set(m), f.mix_ratio, pool)
                    for m in (members, budget))
    settings = target_fit.Settings(
        lr=f.lr[0], train_layers="all", epochs=f.epochs, batch_size=f.batch_size,
        mix_ratio=f.mix_ratio, seed=seed, consistency=cons,
        epoch_samples=batches.epoch_lengths([own, longest], f.min_epoch_samples,
                                            f.max_epoch_samples)[0])
    state_uri = storage.join(layout.stage("finetune"), "teacher-state.pt")
    # in a task, never in the driver (it decodes its cell); with teacher_workers it only
    # drives a TorchTrainer and holds no CPU
    own = ({"num_cpus": 0} if f.teacher_workers > 0 else
           {"num_cpus": scaling.cpus_per_worker,
            "num_gpus": f.gpus_per_worker if scaling.use_gpu else 0})
    ray.get(ray.remote(**own)(_fit_to_end).remote(setup, members, rows, unlabeled, settings,
                                                  state_uri))
    best = checkpoints.load(state_uri)[0]["best"]
    checkpoints.save_classifier(layout.teacher, best["model"], model.backbone, setup.classes,
                                arm="teacher", val_accuracy=best["val_accuracy"])
    storage.delete(state_uri)
    console.detail(f"[finetune] teacher: val acc {best['val_accuracy']:.3f} "
                   f"(epoch {best['epoch'] + 1}, {len(src_cand)} source candidates)")
    return best


def pseudo_labels(setup: SearchSetup, layout: RunLayout, unl_rows: pd.DataFrame,
                  scores: pd.DataFrame, score: ScoreConfig, max_pixels: int) -> pd.DataFrame:
    """The teacher's pseudo-label (global class id) and confidence for every decodable
    unlabeled target image, in the manifest's order, with its `p_target` and `label`; saved
    as `layout.pseudo_labels`."""
    from dtl_ray.method import scoring
    from dtl_ray.raykit import pools

    parts = []
    if len(unl_rows):
        labelled = pools.actor_map(unl_rows, scoring.Scorer, scoring.scorer_kwargs(
            layout.teacher, setup.classes, score, setup.scaling.use_gpu, setup.image_size,
            max_pixels=max_pixels), score, setup.scaling, setup.image_size, max_pixels)
        for b in labelled.select_columns([SAMPLE_ID, "pred", "confidence", "error"]) \
                .iter_batches(batch_format="pandas", batch_size=None):
            bad = b[b["error"] != ""]
            if len(bad):
                raise DataError(
                    f"{len(bad)} unlabeled target image(s) read well before cannot be read "
                    f"now, e.g. {bad[SAMPLE_ID].iloc[0]} ({bad['error'].iloc[0]}): did the "
                    "data change during the run? Fix it and run with --restart-from pretrain")
            parts.append(b[[SAMPLE_ID, "pred", "confidence"]])
    unlabeled = (pd.concat(parts, ignore_index=True) if parts else
                 pd.DataFrame({SAMPLE_ID: [], "pred": [], "confidence": []}))
    unlabeled = unlabeled.astype({"pred": np.int64, "confidence": np.float64})
    unlabeled = unl_rows[[SAMPLE_ID]].merge(unlabeled, on=SAMPLE_ID)  # the manifest's order
    unlabeled = unlabeled.merge(scores[[SAMPLE_ID, "p_target", "label"]], on=SAMPLE_ID)
    parquet.write_df(unlabeled, layout.pseudo_labels)
    return unlabeled
