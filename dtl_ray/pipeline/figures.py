"""The figures of a run's report (and of the benches' pages): matplotlib, as PNG bytes."""

from __future__ import annotations

import base64
import io

import numpy as np

from dtl_ray import storage
from dtl_ray.method import weighting

__all__ = ["png", "png_base64", "confusion", "histograms", "fractions", "ranked", "kinds",
           "discriminator_curves"]


def png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_base64(fig, dpi: int = 90) -> str:
    """A figure as base64 PNG text, to inline in an HTML page; the figure is closed."""
    return base64.b64encode(png(fig, dpi)).decode()


def confusion(confusion: list[list[int]], names: list[str]) -> bytes:
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
    return png(fig)


def discriminator_curves(roc: list, reliability: list, auc: float | None) -> bytes:
    """D on its held-out part: the ROC curve, and the reliability diagram (calibrated p
    against the share of target in each bin of p; on the diagonal, p means what it says)."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.6))
    if roc:
        r = np.asarray(roc)
        a.plot(r[:, 0], r[:, 1], marker=".", label=f"D (AUC {auc:.3f})" if auc else "D")
    a.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    a.set_xlabel("false positive rate (source called target)")
    a.set_ylabel("true positive rate")
    a.set_title("ROC, held out")
    a.legend(loc="lower right", fontsize=8)
    if reliability:
        r = np.asarray(reliability, dtype=float)
        b.plot(r[:, 0], r[:, 1], marker="o", label="D, calibrated")
        for x, y, n in r:
            b.annotate(str(int(n)), (x, y), fontsize=6, xytext=(3, -8),
                       textcoords="offset points")
    b.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    b.set_xlabel("mean p_target in the bin")
    b.set_ylabel("share of target (domains weigh half)")
    b.set_title("Reliability, held out (rows per bin)")
    b.legend(loc="upper left", fontsize=8)
    return png(fig)


def histograms(scores) -> bytes:
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
    return png(fig)


def fractions(trials, doc: dict) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for strategy, sub in trials[trials["strategy"].isin(["discriminator", "random"])].groupby(
            "strategy"):
        best = sub.groupby("source_fraction")["best_val_accuracy"].max()
        ax.plot(best.index, best.values, marker="o", label=strategy)
    for (key, value), marker in ((("arm", "target_only"), "s"), (("arm", "all_source"), "^"),
                                 (("arm", "self_training"), "D"), (("strategy", "weighted"), "*"),
                                 (("arm", "fixmatch"), "v"), (("arm", "adamatch"), "P")):
        sub = trials[trials[key] == value]
        if len(sub):
            label = "method, w**alpha" if value == "weighted" else value
            ax.scatter(sub["source_fraction"].iloc[0], sub["best_val_accuracy"].max(),
                       marker=marker, s=60, label=label, zorder=3)
    ax.set_xlabel("fraction of the source pool selected")
    ax.set_ylabel("best target val accuracy")
    ax.legend(fontsize=8)
    ax.set_title("Target val accuracy against selection fraction")
    return png(fig)


def ranked(scores, k: int = 10) -> bytes:
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
    return png(fig)


def kinds(clusters: list[dict], paths: dict) -> bytes:
    """A row of example images per kind of source image (`select.source_clusters`), most
    target-like first, titled with the kind's share in D's top fraction."""
    import matplotlib.pyplot as plt
    from PIL import Image

    k = max(len(c["examples"]) for c in clusters)
    fig, axes = plt.subplots(len(clusters), k, figsize=(k * 1.0, len(clusters) * 1.1),
                             squeeze=False)
    for r, c in enumerate(clusters):
        for j in range(k):
            ax = axes[r][j]
            ax.axis("off")
            if j < len(c["examples"]) and c["examples"][j] in paths:
                try:
                    raw = storage.read_bytes(paths[c["examples"][j]])
                    ax.imshow(Image.open(io.BytesIO(raw)).convert("RGB"))
                except Exception:  # an image gone since the run: its cell stays empty
                    pass
        axes[r][0].text(-0.15, 0.5, f"kind {c['cluster']}: {c['images']} images,\n"
                        f"{c['in_top_fraction']:.0%} in D's top fraction",
                        transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle("Kinds of source images (k-means on D's features), most target-like first",
                 fontsize=9)
    return png(fig)
