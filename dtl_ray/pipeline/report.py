"""`report.json` and a human report (`report.html` with PNG plots)."""

from __future__ import annotations

import html
import io

import numpy as np

from dtl_ray import storage
from dtl_ray.config import PipelineConfig
from dtl_ray.contract.layout import STAGES, RunLayout
from dtl_ray.data import readers
from dtl_ray.method import weighting

__all__ = ["build", "write", "render", "verdict"]


def build(cfg: PipelineConfig, manifest: readers.Manifest, s: dict, seconds: float) -> dict:
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
    for stage in STAGES:  # each stage's summary under its own name
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
    return head + ", and did NOT beat: " + ", ".join(lost) + "."


def write(doc: dict, layout: RunLayout) -> None:
    storage.write_json(layout.report_json, doc)
    storage.write_bytes(layout.report_html, render(doc, layout).encode())


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def plot_confusion(confusion: list[list[int]], names: list[str]) -> bytes:
    """A confusion matrix (rows: true class, columns: predicted) with its counts, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    side = max(3.5, 0.45 * len(names) + 1.5)
    fig, ax = plt.subplots(figsize=(side + 0.5, side))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    top = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _png(fig)


def _plot_histograms(scores) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(0, 1, 41)
    src = scores[(scores["domain"] == "source") & (scores["split"] == "train")]["p_target"]
    tgt = scores[(scores["domain"] == "target") & scores["split"].isin(["train", "unlabeled"])]
    ax.hist(src, bins=bins, alpha=0.6, density=True, label=f"source train (n={len(src)})")
    ax.hist(tgt["p_target"], bins=bins, alpha=0.6, density=True,
            label=f"target train+unlabeled (n={len(tgt)})")
    ax.set_xlabel("p_target = D(g(x))")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("How target-like each sample looks to the discriminator")
    out = _png(fig)
    plt.close(fig)
    return out


def _plot_fractions(trials, doc: dict) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for strategy, sub in trials[trials["strategy"].isin(["discriminator", "random"])].groupby(
            "strategy"):
        best = sub.groupby("source_fraction")["best_val_accuracy"].max()
        ax.plot(best.index, best.values, marker="o", label=strategy)
    for arm, marker in (("target_only", "s"), ("all_source", "^"), ("self_training", "D")):
        sub = trials[trials["arm"] == arm]
        if len(sub):
            ax.scatter(sub["source_fraction"].iloc[0], sub["best_val_accuracy"].max(),
                       marker=marker, s=60, label=arm, zorder=3)
    ax.set_xlabel("fraction of the source pool selected")
    ax.set_ylabel("best target val accuracy")
    ax.legend(fontsize=8)
    ax.set_title("Target val accuracy against selection fraction")
    out = _png(fig)
    plt.close(fig)
    return out


def _plot_ranked(scores, k: int = 10) -> bytes:
    import matplotlib.pyplot as plt

    src = scores[(scores["domain"] == "source") & (scores["split"] == "train")]
    src = weighting.ranked(src)
    rows = [("highest w", src.head(k)), ("lowest w", src.tail(k))]
    fig, axes = plt.subplots(2, k, figsize=(k * 1.1, 2.6))
    for r, (title, sub) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(sub):
                continue
            row = sub.iloc[c]
            try:
                from PIL import Image

                ax.imshow(Image.open(io.BytesIO(storage.read_bytes(row["path"]))).convert("RGB"))
            except Exception:
                continue
            ax.set_title(f"{row['weight']:.2g}", fontsize=7)
        axes[r][0].text(-0.3, 0.5, title, transform=axes[r][0].transAxes, ha="right",
                        va="center", fontsize=8)
    fig.suptitle("Source images ranked by importance weight w", fontsize=9)
    out = _png(fig)
    plt.close(fig)
    return out


def _plots(layout: RunLayout, doc: dict) -> list[tuple[str, str]]:
    """Writes the PNGs that the run's data allows; returns (file name, caption)."""
    import matplotlib

    matplotlib.use("Agg")
    made = []
    if storage.exists(layout.scores):
        from dtl_ray.data.scorefiles import read_scores

        scores = read_scores(layout)
        made.append(("p_target_hist.png", "p_target of source and target samples",
                     _plot_histograms(scores)))
        made.append(("ranked_source.png", "highest- and lowest-weighted source images",
                     _plot_ranked(scores)))
    if storage.exists(layout.trials):
        made.append(("val_vs_fraction.png", "target val accuracy against fraction",
                     _plot_fractions(readers.read_parquet_df(layout.trials), doc)))
    method = (doc.get("evaluate") or {}).get("method") or {}
    if method.get("confusion"):
        made.append(("confusion_method.png", "the method's confusion matrix on target test "
                     "(rows: true class, columns: predicted)",
                     plot_confusion(method["confusion"], list(method["per_class_accuracy"]))))
    for name, _, png in made:
        storage.write_bytes(layout.plot(name), png)
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
    target = best.get("target_fraction", 0.0)
    return (f"The search chose a <b>{html.escape(str(best.get('arm')))}</b> trial: "
            f"{html.escape(str(best.get('strategy')))} selection, source fraction "
            f"{best.get('source_fraction')}, target fraction {target}; lr {best.get('lr')}, "
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
    for name, caption in _plots(layout, doc):
        parts.append(f"<figure><img src='{name}'><figcaption>{caption}</figcaption></figure>")
    parts.append("<h2>Data</h2>" + _table([[k, v] for k, v in doc["data"].items()], ["", ""]))
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>dtl-ray {doc['name']}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
