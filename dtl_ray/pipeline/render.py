"""`report.html` from `report.json`: a page a person reads without the code.

A header (what ran, when, how long, the versions and the hardware, links to the run's files),
the verdict, the test table (every row's gain over `target_only`), then one section per stage
with its numbers in words and its plots, the table of every fine-tuning trial, and the data.
"""

from __future__ import annotations

import html
import math

from dtl_ray import storage
from dtl_ray.contract.layout import RunLayout

__all__ = ["render", "table", "label", "value", "duration", "per_class_rows", "best_sentence",
           "discriminator_note"]

SECTIONS = (("pretrain", "Pretraining"), ("discriminate", "Discriminator"),
            ("score", "Scoring"), ("select", "Selection"), ("finetune", "Fine-tuning search"))

LABELS = {
    "heldout_auc": "held-out AUC", "out_of_fold_auc": "out-of-fold AUC",
    "heldout_accuracy": "held-out accuracy",
    "heldout_balanced_accuracy": "held-out balanced accuracy",
    "proxy_a_distance": "proxy A-distance (0 alike, 2 disjoint)",
    "heldout_calibration_error_raw": "held-out calibration error (ECE), before Platt",
    "heldout_calibration_error": "held-out calibration error (ECE), calibrated",
    "near_perfect": "separates the domains almost perfectly",
    "n_source": "source rows", "n_target": "target rows", "heldout": "rows held out",
    "source_val_accuracy": "source val accuracy", "best_epoch": "best epoch",
    "rows_in": "images read", "rows_out": "images scored", "rows_rejected": "images rejected",
    "weights_capped": "weights capped", "mean_weight": "mean weight",
    "source_at_clip_floor": "source at the clip floor", "source_weight_ess":
    "effective sample size of the weights (share of source)", "weight_divisor":
    "weight divisor (N_s/N_t)", "startup_seconds": "start-up", "startup_rows":
    "images in the start-up", "seconds": "time", "resumed_from_epochs": "resumed after epochs",
}
"""Report keys in words; any other key is shown with its underscores as spaces."""

TRIAL_COLUMNS = (("arm", "arm"), ("strategy", "selection"), ("source_fraction", "source"),
                 ("alpha", "alpha"), ("target_fraction", "target"),
                 ("consistency", "consistency"), ("lr", "lr"), ("train_layers", "layers"),
                 ("n_candidates", "source images"), ("best_val_accuracy", "best val acc"),
                 ("best_epoch", "best epoch"), ("epochs_run", "epochs run"))

LINKS = (("config.yaml", "the config as run"), ("report.json", "these figures as JSON"),
         ("logs", "Ray's logs"), ("tensorboard", "TensorBoard event files"),
         ("finetune/models", "the models (one per arm)"),
         ("finetune/trials.parquet", "the trials"),
         ("evaluate/predictions.parquet", "every test prediction"),
         ("score/scores", "every image's p_target and weight"),
         ("rejected.parquet", "the images that could not be read"))


def label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def duration(seconds: float) -> str:
    """`2 h 03 min`, `4 min 07 s`, `12.3 s`."""
    s = float(seconds)
    if s >= 3600:
        return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    if s >= 60:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{s:.1f} s"


def value(key: str, v) -> str:
    """A value as a person reads it: counts with separators, times as durations, dicts as
    `train 2,100 · val 280`, floats to 3 places."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if key.endswith("seconds") and isinstance(v, (int, float)):
        return duration(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return " · ".join(f"{k} {value(k, x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(value(key, x) for x in v)
    return str(v)


def table(rows: list[list], head: list[str] | None = None) -> str:
    """An HTML table; a key/value table has no header row. Cells are formatted by `value`
    (a cell given as ("key", v) is formatted as that key's value)."""
    def cell(c) -> str:
        if isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str):
            return value(*c)
        return value("", c) if not isinstance(c, str) else c
    th = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table>{th}{body}</table>"


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
            f"{value('', best.get('best_val_accuracy'))} at epoch {best.get('best_epoch')} of "
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


def _header(doc: dict, layout: RunLayout) -> list[str]:
    run, cfg = doc.get("run") or {}, doc.get("config") or {}
    parts = []
    what = (f"{html.escape(str(cfg.get('backbone', '?')))} at {cfg.get('image_size', '?')} px, "
            f"seed {doc.get('seed', '?')}")
    when = f", finished {html.escape(run['finished'])}" if run.get("finished") else ""
    took = (f"; the stages took {duration(doc['seconds_total'])}"
            if doc.get("seconds_total") is not None else "")
    parts.append(f"<p>Run <b>{html.escape(doc['name'])}</b> ({what}){when}{took}.")
    versions = ", ".join(f"{k} {html.escape(str(run[k]))}" for k in
                         ("dtl_ray", "ray", "torch", "torchvision", "python") if run.get(k))
    if versions:
        parts.append(f" Versions: {versions}.".replace("dtl_ray", "dtl-ray"))
    if run.get("hardware"):
        parts.append(f" Hardware: {html.escape(run['hardware'])}.")
    parts.append("</p>")
    links = [f"<a href='{rel}'>{html.escape(text)}</a> (<code>{rel}</code>)"
             for rel, text in LINKS
             if storage.exists(storage.join(layout.root, rel))
             or (rel == "tensorboard" and cfg.get("tensorboard"))]
    if links:
        parts.append("<p>Files of this run: " + "; ".join(links) + ".</p>")
    return parts


def _test_section(doc: dict) -> list[str]:
    ev = doc["evaluate"]
    models = {"method (discriminator selection)": ev.get("method") or {}, **ev["baselines"]}
    base = (ev["baselines"].get("target_only") or {}).get("target_test_accuracy")
    rows = []
    for name, m in models.items():
        acc = m.get("target_test_accuracy")
        gain = f"{acc - base:+.3f}" if acc is not None and base is not None else "—"
        rows.append([name, acc, m.get("transfer_loss"), gain])
    n_test = ev.get("test_images", "?")
    n_val = (doc.get("data") or {}).get("target", {}).get("val")
    on_val = ev.get("measured_on") == "val"
    title = ("Target val (no test split: measured on the images that chose the models, so "
             "every figure is optimistic; add target test/ for a fair one)" if on_val else
             "Target test (measured once; nothing was chosen on it)")
    parts = [f"<h2>{title}</h2>",
             table(rows, ["model", f"accuracy (on {value('', n_test)} "
                                   f"{'val' if on_val else 'test'} images)",
                          "transfer loss (cross-entropy)", "gain over target_only"])]
    if isinstance(n_val, int) and n_val:
        parts.append(f"<p>Models were chosen on {n_val:,} target val images (one image = "
                     f"{100 / n_val:.2f} points of val accuracy).</p>")
    parts.append(f"<p>The whole search's choice on target val was <b>"
                 f"{html.escape(ev['chosen']['arm'])}</b>, test accuracy "
                 f"{ev['chosen']['target_test_accuracy']:.3f}.</p>")
    rows, head = per_class_rows(ev)
    if rows:
        parts.append("<h3>Accuracy per class (target test)</h3>" + table(rows, head))
    free = ev.get("label_free")
    if free:
        parts.append(
            f"<p>Chosen <b>without target labels</b> ({free['criterion'].upper()} risk on "
            f"importance-weighted source val): <b>{html.escape(free['arm'])}</b> (trial "
            f"{html.escape(free['trial_id'])}, epoch {free['epoch']}), test accuracy "
            f"{free['target_test_accuracy']:.3f}, against "
            f"{ev['chosen']['target_test_accuracy']:.3f} for the choice on labeled target "
            f"val: the label-free choice costs "
            f"{ev['chosen']['target_test_accuracy'] - free['target_test_accuracy']:+.3f}.</p>")
    return parts


def _trials(layout: RunLayout) -> str:
    if not storage.exists(layout.trials):
        return ""
    from dtl_ray.storage import parquet

    t = parquet.read_df(layout.trials)
    cols = [(c, h) for c, h in TRIAL_COLUMNS if c in t.columns]
    t = t.sort_values("best_val_accuracy", ascending=False)
    rows = [[(c, r[c].item() if hasattr(r[c], "item") else r[c]) for c, _ in cols]
            for _, r in t.iterrows()]
    return (f"<h3>Every trial ({len(t):,}), best val accuracy first</h3>"
            + table(rows, [h for _, h in cols]))


def _figure(name: str, caption: str) -> str:
    return (f"<figure><img src='{name}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render(doc: dict, layout: RunLayout, plots: dict[str, list[tuple[str, str]]]) -> str:
    """The page; `plots`: (file, caption) per section key (`evaluate`, a stage's name)."""
    parts = [f"<h1>dtl-ray report: {html.escape(doc['name'])}</h1>", *_header(doc, layout),
             f"<p><b>{html.escape(doc.get('verdict', 'The pipeline has not finished.'))}</b></p>"]
    link = (doc.get("tracking") or {}).get("mlflow_url")
    if link:
        parts.append(f"<p>MLflow: <a href='{html.escape(link)}'>this run, its stages and "
                     "trials</a></p>")
    if doc.get("evaluate"):
        parts += _test_section(doc)
    parts += [_figure(*p) for p in plots.get("evaluate", [])]
    for key, title in SECTIONS:
        if key not in doc:
            continue
        parts.append(f"<h2>{title}</h2>")
        if key == "discriminate" and discriminator_note(doc):
            parts.append(f"<p>{html.escape(discriminator_note(doc))}</p>")
        if key == "finetune" and isinstance(doc[key].get("best"), dict):
            parts.append(f"<p>{best_sentence(doc[key]['best'])}</p>")
        flat = [[label(k), (k, v)] for k, v in doc[key].items()
                if k != "best"  # (in words above)
                and (not isinstance(v, (dict, list)) or (isinstance(v, dict) and v and all(
                    not isinstance(x, (dict, list)) for x in v.values())))]
        parts.append(table(flat))
        if key == "select" and doc[key].get("source_clusters"):
            parts.append("<h3>How the discriminator separates the source</h3>" + table(
                [[c["cluster"], c["images"], c["in_top_fraction"], c["selected"],
                  c["mean_p_target"]] for c in doc[key]["source_clusters"]],
                ["kind (k-means on D's features)", "images", "share in D's top fraction",
                 "share selected", "mean p_target"]))
        parts += [_figure(*p) for p in plots.get(key, [])]
        if key == "finetune":
            parts.append(_trials(layout))
    data = doc.get("data") or {}
    rows = [[f"{d} images", (d, data[d])] for d in ("source", "target") if d in data]
    rows += [[label(k), (k, v)] for k, v in data.items() if k not in ("source", "target")]
    parts.append("<h2>Data</h2>" + table(rows))
    style = ("body{font-family:sans-serif;max-width:64em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left}img{max-width:100%}figure{margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>dtl-ray "
            f"{html.escape(doc['name'])}</title><style>{style}</style></head><body>"
            f"{''.join(parts)}</body></html>")
