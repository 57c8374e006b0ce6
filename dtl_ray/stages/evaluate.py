"""Stage 6: the chosen models, measured once on target test (on target val when the target
has no test split, which the result and the report say).

Models: `method` (best discriminator-selection trial on target val), `chosen` (best trial of the
whole search), every baseline's best trial, and `source_only` (the pretrained model, its head
restricted to the target classes). One Ray Data pass scores them all.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from dtl_ray import storage
from dtl_ray.config import DataConfig, ModelConfig, ScalingConfig, ScoreConfig
from dtl_ray.contract import registry
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.results import EvaluateResult
from dtl_ray.data import manifests, readers
from dtl_ray.method import scoring
from dtl_ray.storage import parquet

__all__ = ["run", "measure"]

FINETUNED = ["target_only", "all_source", "random_subset", "self_training", "fixmatch",
             "adamatch"]
BASELINES = ["source_only", *FINETUNED, "dann"]


def measure(df: pd.DataFrame, name: str, classes: list[int], class_names: list[str]) -> dict:
    """Accuracy, per-class accuracy, transfer loss (mean CE) and confusion of model `name`."""
    pred, label = df[f"pred__{name}"].to_numpy(), df["label"].to_numpy()
    per_class = {class_names[c]: float((pred[label == c] == c).mean())
                 for c in classes if (label == c).any()}
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(label, pred):
        confusion[index[int(t)], index[int(p)]] += 1
    return {"target_test_accuracy": float((pred == label).mean()),
            "transfer_loss": float(df[f"loss__{name}"].mean()),
            "per_class_accuracy": per_class, "confusion": confusion.tolist()}


def run(layout: RunLayout, scaling: ScalingConfig, model: ModelConfig, data: DataConfig,
        score: ScoreConfig) -> EvaluateResult:
    """Evaluates every model on target test (read as the run reads, in the score stage's
    batches); returns method, baselines and the verdict."""
    import ray.data

    t0 = time.time()
    manifest = manifests.load(layout)
    classes = manifest.target_classes
    uris = {"source_only": layout.pretrain_model}
    if storage.exists(layout.dann_model):
        uris["dann"] = layout.dann_model  # the adapted source model, head restricted likewise
    for arm in ["method", "chosen", "label_free", *FINETUNED]:
        if storage.exists(layout.model(arm)):
            uris[arm] = layout.model(arm)
    ft = registry.stage("finetune").read(layout.summary("finetune"))
    for c in ft.by_cell:
        uris[c["model"]] = layout.model(c["model"])
    test = manifest.rows("target", "test")
    measured_on = "test"
    if test.empty:  # no test split: val, which the report says chose the models
        test, measured_on = manifest.rows("target", "val"), "val"
    df = readers.to_dataset(test, model.frame, max_pixels=data.max_image_pixels).map_batches(
        scoring.MultiEvaluator,
        fn_constructor_kwargs={"model_uris": uris, "classes": classes,
                               "use_gpu": scaling.use_gpu},
        compute=ray.data.ActorPoolStrategy(size=1), batch_size=score.batch_size,
        batch_format="numpy", num_cpus=scaling.cpus_per_worker,
        num_gpus=1 if scaling.use_gpu else 0).to_pandas()
    parquet.write_df(df, layout.predictions)
    results = {k: measure(df, k, classes, manifest.classes) for k in uris}
    base = {k: {m: results[k][m] for m in ("target_test_accuracy", "transfer_loss",
                                           "per_class_accuracy")}
            for k in BASELINES if k in results}
    method = dict(results.get("method", {}))
    target_only = results.get("target_only", {}).get("target_test_accuracy")
    if method and target_only is not None:
        method["transfer_gain"] = method["target_test_accuracy"] - target_only
    beaten = [k for k, v in base.items()
              if method and method["target_test_accuracy"] > v["target_test_accuracy"]]
    free = ft.label_free
    label_free = None
    if free and "label_free" in results:
        label_free = {**free, **{m: results["label_free"][m] for m in ("target_test_accuracy",
                                                                       "transfer_loss")}}
    # each cell's val-chosen model on test, for plots by fraction (nothing is chosen on it)
    by_cell = [{**{k: c[k] for k in ("arm", "strategy", "source_fraction", "target_fraction",
                                     "best_val_accuracy")},
                "target_test_accuracy": results[c["model"]]["target_test_accuracy"]}
               for c in ft.by_cell]
    return EvaluateResult(
        method=method, baselines=base, label_free=label_free, by_cell=by_cell,
        chosen={"arm": ft.best["arm"], **{m: results["chosen"][m] for m in (
            "target_test_accuracy", "transfer_loss")}},
        method_beats=beaten, test_images=int(len(df)), test_rejected=int(len(test) - len(df)),
        seconds=round(time.time() - t0, 2), measured_on=measured_on)
