"""`report.json` and a human report (`report.html` with PNG plots)."""

from __future__ import annotations

import html

from dtl_ray import storage
from dtl_ray.config import PipelineConfig
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.registry import NAMES
from dtl_ray.data import manifests
from dtl_ray.pipeline import figures
from dtl_ray.storage import parquet

__all__ = ["build", "write", "render", "verdict"]


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
                   "num_workers": cfg.scaling.num_workers, "use_gpu": cfg.scaling.use_gpu},
    }
    for stage in NAMES:  # each stage's summary under its own name
        if stage in s:
            doc[stage] = s[stage]
    if "evaluate" in s:
        doc["verdict"] = verdict(s["evaluate"])
    return doc


def verdict(ev: dict) -> str:
    """One plain sentence on whether discriminator selection beat the baselines on test."""
    if not ev.get("method"):
        return "No discriminator-selection trial finished, so there is nothing to compare."
    acc = ev["method"]["target_test_accuracy"]
    lost = [f"{k} ({v['target_test_accuracy']:.3f})" for k, v in ev["baselines"].items()
            if v["target_test_accuracy"] >= acc]
    head = f"Discriminator-selected transfer reached {acc:.3f} target test accuracy"
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
    storage.write_bytes(layout.report_html, render(doc, layout).encode())


def _plots(layout: RunLayout, doc: dict) -> list[tuple[str, str]]:
    """Writes the PNGs that the run's data allows; returns (file name, caption)."""
    import matplotlib

    matplotlib.use("Agg")
    made = []
    if storage.exists(layout.scores):
        from dtl_ray.data.scorefiles import read_scores

        scores = read_scores(layout)
        made.append(("p_target_hist.png", "p_target of source and target samples",
                     figures.histograms(scores)))
        made.append(("ranked_source.png", "highest- and lowest-weighted source images",
                     figures.ranked(scores)))
        kinds = (doc.get("select") or {}).get("source_clusters")
        if kinds:
            made.append(("source_kinds.png", "how the discriminator separates the source: "
                         "examples of each kind of source image and its share in D's top "
                         "fraction", figures.kinds(kinds, dict(zip(scores["sample_id"],
                                                                    scores["path"])))))
    if storage.exists(layout.trials):
        made.append(("val_vs_fraction.png", "target val accuracy against fraction",
                     figures.fractions(parquet.read_df(layout.trials), doc)))
    method = (doc.get("evaluate") or {}).get("method") or {}
    if method.get("confusion"):
        made.append(("confusion_method.png", "the method's confusion matrix on target test "
                     "(rows: true class, columns: predicted)",
                     figures.confusion(method["confusion"], list(method["per_class_accuracy"]))))
    for name, _, data in made:
        storage.write_bytes(layout.plot(name), data)
    return [(name, caption) for name, caption, _ in made]


def _table(rows: list[list], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def per_class_rows(ev: dict) -> tuple[list[list], list[str]]:
    """Rows (class, the method's accuracy, each baseline's) for the report's per-class table."""
    models = {"method": ev["method"], **ev["baselines"]}
    models = {k: v for k, v in models.items() if v.get("per_class_accuracy")}
    if "method" not in models:
        return [], []
    names = list(models["method"]["per_class_accuracy"])
    rows = [[n, *[models[m]["per_class_accuracy"].get(n, float("nan")) for m in models]]
            for n in names]
    return rows, ["class", *models]


def best_sentence(best: dict) -> str:
    """The search's chosen trial in words (it used to be shown as a raw dict)."""
    target, alpha = best.get("target_fraction", 0.0), best.get("alpha")
    soft = f" (losses weighted by w**{alpha})" if alpha is not None and alpha == alpha else ""
    return (f"The search chose a <b>{html.escape(str(best.get('arm')))}</b> trial: "
            f"{html.escape(str(best.get('strategy')))} selection, source fraction "
            f"{best.get('source_fraction')}{soft}, target fraction {target}; lr {best.get('lr')}, "
            f"layers {html.escape(str(best.get('train_layers')))}, candidate weight "
            f"{best.get('candidate_weight')}; best target val accuracy "
            f"{_fmt(best.get('best_val_accuracy'))} at epoch {best.get('best_epoch')} of "
            f"{best.get('epochs_run')} run (trial {html.escape(str(best.get('trial_id')))}, "
            f"{best.get('n_candidates')} source candidates).")


def discriminator_note(doc: dict) -> str | None:
    """What a near-perfect discriminator means for the weights, in words (None otherwise)."""
    d, sc = doc.get("discriminate"), doc.get("score")
    if not d or not d.get("near_perfect"):
        return None
    text = (f"The discriminator separates the domains almost perfectly (held-out AUC "
            f"{d['heldout_auc']:.3f}, proxy A-distance {d['proxy_a_distance']:.2f}): the "
            f"density ratio p/(1-p) is near 0 for nearly every source image, so the weights "
            f"carry little beyond their order.")
    if sc and sc.get("source_at_clip_floor") is not None:
        text += (f" {sc['source_at_clip_floor']:.1%} of source train sit at the clip floor "
                 f"(p <= clip) and the weights' effective sample size is "
                 f"{sc['source_weight_ess']:.1%} of source train.")
    text += (f" Selection ranks by the {d.get('folds', 1)}-fold out-of-fold calibrated logit, "
             "which keeps an order among them; weighting losses by w (finetune.weight_by_w) "
             "or choosing models by importance-weighted source val means little here.")
    return text


def render(doc: dict, layout: RunLayout) -> str:
    """The human report: verdict first, then results, stages, plots and the data."""
    parts = [f"<h1>dtl-ray report: {html.escape(doc['name'])}</h1>",
             f"<p><b>{html.escape(doc.get('verdict', 'The pipeline has not finished.'))}</b></p>"]
    link = doc.get("tracking", {}).get("mlflow_url")
    if link:
        parts.append(f"<p>MLflow: <a href='{html.escape(link)}'>this run, its stages and "
                     "trials</a></p>")
    ev = doc.get("evaluate")
    if ev:
        rows = [["method (discriminator selection)", ev["method"].get("target_test_accuracy"),
                 ev["method"].get("transfer_loss"), ev["method"].get("transfer_gain", "")]]
        rows += [[k, v["target_test_accuracy"], v["transfer_loss"], ""]
                 for k, v in ev["baselines"].items()]
        parts.append("<h2>Target test (measured once; nothing was chosen on it)</h2>")
        n_test = ev.get("test_images", "?")
        n_val = doc.get("data", {}).get("target", {}).get("val", "?")
        parts.append(_table(rows, ["model", f"accuracy (on {n_test} test images)",
                                   "transfer loss (CE)", "gain vs target_only"]))
        parts.append(f"<p>Models were chosen on {n_val} target val images (one image = "
                     f"{100 / n_val if isinstance(n_val, int) and n_val else float('nan'):.2f} "
                     "points of val accuracy).</p>")
        parts.append(f"<p>The whole search's choice on target val was <b>{ev['chosen']['arm']}"
                     f"</b>, test accuracy {ev['chosen']['target_test_accuracy']:.3f}.</p>")
        rows, head = per_class_rows(ev)
        if rows:
            parts.append("<h3>Accuracy per class (target test)</h3>" + _table(rows, head))
        free = ev.get("label_free")
        if free:
            parts.append(
                f"<p>Chosen <b>without target labels</b> ({free['criterion'].upper()} risk on "
                f"importance-weighted source val): <b>{free['arm']}</b> (trial "
                f"{html.escape(free['trial_id'])}, epoch {free['epoch']}), test accuracy "
                f"{free['target_test_accuracy']:.3f}, against "
                f"{ev['chosen']['target_test_accuracy']:.3f} for the choice on labeled target "
                f"val: the label-free choice costs "
                f"{ev['chosen']['target_test_accuracy'] - free['target_test_accuracy']:+.3f}."
                "</p>")
    for key, title in (("pretrain", "Pretraining"), ("discriminate", "Discriminator"),
                       ("score", "Scoring"), ("select", "Selection"),
                       ("finetune", "Fine-tuning search")):
        if key == "discriminate" and discriminator_note(doc):
            parts.append(f"<p>{html.escape(discriminator_note(doc))}</p>")
        if key in doc:
            flat = [[k, v] for k, v in doc[key].items() if not isinstance(v, (dict, list))]
            parts.append(f"<h2>{title}</h2>")
            if key == "finetune" and isinstance(doc[key].get("best"), dict):
                parts.append(f"<p>{best_sentence(doc[key]['best'])}</p>")
            parts.append(_table(flat, ["", ""]))
            if key == "select" and doc[key].get("source_clusters"):
                parts.append("<h3>How the discriminator separates the source</h3>" + _table(
                    [[c["cluster"], c["images"], c["in_top_fraction"], c["selected"],
                      c["mean_p_target"]] for c in doc[key]["source_clusters"]],
                    ["kind (k-means on D's features)", "images", "share in D's top fraction",
                     "share selected", "mean p_target"]))
    for name, caption in _plots(layout, doc):
        parts.append(f"<figure><img src='{name}'><figcaption>{caption}</figcaption></figure>")
    parts.append("<h2>Data</h2>" + _table([[k, v] for k, v in doc["data"].items()], ["", ""]))
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>dtl-ray {doc['name']}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
