"""`report.json` and a human report (`report.html` with PNG plots)."""

from __future__ import annotations

from dtl_ray import storage
from dtl_ray.config import PipelineConfig
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.registry import NAMES
from dtl_ray.data import manifests
from dtl_ray.pipeline import figures, render
from dtl_ray.storage import parquet

__all__ = ["build", "write", "verdict"]


def build(cfg: PipelineConfig, manifest: manifests.Manifest, s: dict, seconds: float) -> dict:
    """The report document from the stage summaries (missing stages are left out)."""
    counts = manifest.counts()
    doc = {
        "name": cfg.name, "seed": cfg.seed,
        "seconds_total": round(sum(v.get("seconds", 0) for v in s.values()), 2),
        "seconds_this_invocation": round(seconds, 2),
        "data": {"source": counts["source"], "target": counts["target"],
                 "classes": manifest.classes,
                 "target_classes": [manifest.classes[c] for c in manifest.target_classes],
                 "rejected": s.get("score", {}).get("rows_rejected")},
        "config": {"backbone": cfg.model.backbone, "image_size": cfg.model.image_size,
                   "source": cfg.source.uri, "target": cfg.target.uri,
                   "num_workers": cfg.scaling.num_workers, "use_gpu": cfg.scaling.use_gpu,
                   "tensorboard": cfg.tracking.tensorboard},
        "run": run_info(),
    }
    for stage in NAMES:  # each stage's summary under its own name
        if stage in s:
            doc[stage] = s[stage]
    if "evaluate" in s:
        doc["verdict"] = verdict(s["evaluate"])
    return doc


def run_info() -> dict:
    """When the report was made, the versions that made it and the hardware (the Ray
    cluster's, when Ray is up; else this machine's)."""
    import datetime
    import importlib.metadata
    import os
    import platform

    import ray
    import torch
    import torchvision

    now = datetime.datetime.now(datetime.UTC)
    info = {"finished": now.strftime("%Y-%m-%d %H:%M UTC"),
            "dtl_ray": importlib.metadata.version("dtl-ray"), "ray": ray.__version__,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}
    if ray.is_initialized():
        res = ray.cluster_resources()
        kinds = sorted(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:"))
        info["hardware"] = (f"a Ray cluster of {len([n for n in ray.nodes() if n['Alive']])} "
                            f"node(s), {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} "
                            f"GPUs{' (' + ', '.join(kinds) + ')' if kinds else ''}")
    else:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        info["hardware"] = (f"{platform.machine()}, {os.cpu_count()} CPUs, {gpus} GPUs"
                            + (f" ({torch.cuda.get_device_name(0)})" if gpus else ""))
    return info


def verdict(ev: dict) -> str:
    """One plain sentence on whether discriminator selection beat the baselines on test."""
    if not ev.get("method"):
        return "No discriminator-selection trial finished, so there is nothing to compare."
    acc = ev["method"]["target_test_accuracy"]
    lost = [f"{k} ({v['target_test_accuracy']:.3f})" for k, v in ev["baselines"].items()
            if v["target_test_accuracy"] >= acc]
    head = f"Discriminator-selected transfer reached {acc:.3f} target test accuracy"
    if ev.get("measured_on") == "val":
        head = (f"The target has no test split, so the models were measured on target val, "
                f"which chose them (every figure is optimistic): discriminator-selected "
                f"transfer reached {acc:.3f}")
    if not lost:
        return head + ", above every baseline."
    recipes = {k: v["target_test_accuracy"] for k, v in ev["baselines"].items()
               if k in ("fixmatch", "adamatch") and v["target_test_accuracy"] >= acc}
    advice = ""
    if recipes:  # the practitioner's recipes: if the method loses to one, say which to use
        best = max(recipes, key=recipes.get)
        advice = (f" On this data a user is better served by {best}, the practitioner's "
                  "recipe (its model is saved with the run's).")
    return head + ", and did NOT beat: " + ", ".join(lost) + "." + advice


def write(doc: dict, layout: RunLayout) -> None:
    storage.write_json(layout.report_json, doc)
    page = render.render(doc, layout, _plots(layout, doc))
    storage.write_bytes(layout.report_html, page.encode())


def _plots(layout: RunLayout, doc: dict) -> dict[str, list[tuple[str, str]]]:
    """Writes the PNGs that the run's data allows; returns (file name, caption) per section
    of the report (`evaluate` or a stage's name)."""
    import matplotlib

    matplotlib.use("Agg")
    made = []
    d = doc.get("discriminate") or {}
    if d.get("heldout_roc") or d.get("heldout_reliability"):
        made.append(("discriminate", "discriminator_roc.png", "the discriminator on its "
                     "held-out part: ROC curve and reliability diagram",
                     figures.discriminator_curves(d.get("heldout_roc") or [],
                                                  d.get("heldout_reliability") or [],
                                                  d.get("heldout_auc"))))
    if storage.exists(layout.scores):
        from dtl_ray.data.scorefiles import read_scores

        scores = read_scores(layout)
        made.append(("discriminate", "p_target_hist.png", "p_target of source and target "
                     "samples", figures.histograms(scores)))
        made.append(("score", "ranked_source.png", "highest- and lowest-weighted source "
                     "images", figures.ranked(scores)))
        kinds = (doc.get("select") or {}).get("source_clusters")
        if kinds:
            made.append(("select", "source_kinds.png", "how the discriminator separates the "
                         "source: examples of each kind of source image and its share in D's "
                         "top fraction", figures.kinds(kinds, dict(zip(scores["sample_id"],
                                                                       scores["path"])))))
    if storage.exists(layout.trials):
        made.append(("finetune", "val_vs_fraction.png", "target val accuracy against fraction",
                     figures.fractions(parquet.read_df(layout.trials), doc)))
    method = (doc.get("evaluate") or {}).get("method") or {}
    if method.get("confusion"):
        made.append(("evaluate", "confusion_method.png", "the method's confusion matrix on "
                     "target test (rows: true class, columns: predicted)",
                     figures.confusion(method["confusion"], list(method["per_class_accuracy"]))))
    out: dict[str, list[tuple[str, str]]] = {}
    for section, name, caption, data in made:
        storage.write_bytes(layout.plot(name), data)
        out.setdefault(section, []).append((name, caption))
    return out
