"""The choice: each arm's best trial on target val (and the overall `chosen`), each cell's best
(so evaluation can plot test accuracy by fraction), and the label-free choice (the lowest
source-val risk over the whole search, no target label). Every chosen model is saved as a
classifier under `RunLayout.model`.
"""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from dtl_ray.contract.layout import RunLayout
from dtl_ray.method import design
from dtl_ray.storage import checkpoints

__all__ = ["best", "arms", "by_cell", "label_free"]


def best(table: pd.DataFrame) -> pd.Series:
    """The trial with the highest val accuracy, then the lowest val loss."""
    return table.sort_values(["best_val_accuracy", "best_val_loss", "trial_id"],
                             ascending=[False, True, True]).iloc[0]


def _plain(row: pd.Series) -> dict:
    """A trial row as plain values (NaN, e.g. the alpha of a hard cell, as None)."""
    out = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    return {k: None if isinstance(v, float) and v != v else v for k, v in out.items()}


def arms(table: pd.DataFrame, states: dict, layout: RunLayout, backbone: str,
         classes: list[int]) -> dict:
    """Each arm's best trial and the overall choice (`chosen`), saved; their trial rows."""
    chosen = {}
    for arm in design.ARMS + ["chosen"]:
        sub = table if arm == "chosen" else table[table["arm"] == arm]
        if sub.empty:
            continue
        row = best(sub)
        checkpoints.save_classifier(layout.model(arm), states[row["trial_id"]], backbone,
                                    classes, arm=str(row["arm"]), trial_id=str(row["trial_id"]))
        chosen[arm] = _plain(row)
    return chosen


def by_cell(table: pd.DataFrame, states: dict, cells: list[design.Cell], layout: RunLayout,
            backbone: str, classes: list[int]) -> list[dict]:
    """Each cell's best trial, saved as model `cell-<i>`."""
    out = []
    for i, cell in enumerate(cells):
        sub = table[table["cell"] == i]
        if sub.empty:
            continue
        row = best(sub)
        checkpoints.save_classifier(layout.model(f"cell-{i}"), states[row["trial_id"]],
                                    backbone, classes, arm=cell.arm,
                                    trial_id=str(row["trial_id"]))
        out.append({"model": f"cell-{i}", **asdict(cell), "trial_id": str(row["trial_id"]),
                    "best_val_accuracy": float(row["best_val_accuracy"])})
    return out


def label_free(table: pd.DataFrame, free_states: dict, criterion: str, layout: RunLayout,
               backbone: str, classes: list[int], source_val_images: int) -> dict | None:
    """The trial with the lowest label-free risk, saved as model `label_free` (None when no
    trial has one: no source val)."""
    free = table[table["trial_id"].isin(free_states)].dropna(subset=["best_free_risk"])
    if free.empty:
        return None
    row = free.sort_values(["best_free_risk", "trial_id"]).iloc[0]
    checkpoints.save_classifier(layout.model("label_free"), free_states[row["trial_id"]],
                                backbone, classes, arm=str(row["arm"]),
                                trial_id=str(row["trial_id"]), criterion=criterion)
    return {"criterion": criterion, "arm": str(row["arm"]), "trial_id": str(row["trial_id"]),
            "risk": float(row["best_free_risk"]), "epoch": int(row["best_free_epoch"]),
            "source_val_images": int(source_val_images)}
