"""`dtl-ray bench`: the method and every baseline over several seeds, with plots.

For each seed it runs the whole pipeline (on a freshly generated demo pair when the config is
the demo's, or `--pair` is given) and collects from each run's report: target test accuracy of
the method and of every baseline, the label-free choice beside the labeled one, the search's
accuracy by source fraction per strategy, p_target histograms, the chosen model's confusion
matrix, the per-class kept fraction of the source and, in adversarial mode, the proxy
A-distance before and after adaptation. Writes `<out>/bench.json` (per seed, mean and
standard deviation) and `<out>/bench.html` with the plots.
"""

from __future__ import annotations

import hashlib
import html
import os
import time

import numpy as np

from dtl_ray import config, pipeline, storage
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data.pairs import demo
from dtl_ray.errors import ConfigError
from dtl_ray.pipeline import figures, preflight
from dtl_ray.storage import parquet
from dtl_ray.tools import compare
from dtl_ray.tools.compare import mean_sd

__all__ = ["run", "summarise", "seed_config", "accuracies"]

ROWS = ["method", "source_only", "target_only", "all_source", "random_subset",
        "self_training", "fixmatch", "adamatch", "dann"]


def seed_config(config_path: str | None, seed: int, out: str, pair: str | None,
                overrides: list[str]) -> tuple[str, list[str]]:
    """One seed's run name and config overrides (its demo pair written first, once, when
    `pair` is given)."""
    extra = []
    name = f"bench-seed{seed}"
    if pair is not None:  # a demo pair per seed
        data_dir = os.path.join(out, f"data-{pair}-seed{seed}")
        if not storage.exists(os.path.join(data_dir, "_SEED")):
            demo.write_demo(data_dir, seed=seed, pair=pair)
            storage.write_json(os.path.join(data_dir, "_SEED"), seed)
        extra = [f"source.uri={data_dir}/source", f"target.uri={data_dir}/target"]
        name = f"bench-{pair}-seed{seed}"
    if overrides:  # runs with other settings get other names (a finished run is reused)
        name += "-" + hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    return name, [f"seed={seed}", f"storage={out}", *extra, *overrides]


def accuracies(doc: dict) -> dict:
    """Target test accuracy of the method and of every baseline in a run's report."""
    ev = doc["evaluate"]
    return {"method": ev["method"]["target_test_accuracy"],
            **{k: v["target_test_accuracy"] for k, v in ev["baselines"].items()}}


def _seed_run(config_path: str | None, seed: int, out: str, pair: str | None,
              overrides: list[str]) -> dict:
    name, args = seed_config(config_path, seed, out, pair, overrides)
    cfg = config.load_config(config_path, [f"name={name}", *args])
    print(f"[bench] seed {seed}: {name}", flush=True)
    doc = pipeline.run(cfg)
    resolved = preflight.absolute(cfg)
    layout = RunLayout.of(resolved.storage, resolved.name)
    ev = doc["evaluate"]
    acc = accuracies(doc)
    trials = parquet.read_df(layout.trials)
    pred = parquet.read_df(layout.predictions)
    correct = {r: compare.correct_bits(pred[f"pred__{r}"], pred["label"]) for r in acc
               if f"pred__{r}" in pred}
    scores = parquet.read_df(layout.scores,
                                  columns=["domain", "split", "p_target"])
    hist_edges = np.linspace(0, 1, 21)
    hists = {f"{d}/{s}": np.histogram(g["p_target"].dropna(), bins=hist_edges)[0].tolist()
             for (d, s), g in scores.groupby(["domain", "split"])}
    curve = (trials.groupby(["strategy", "source_fraction"])["best_val_accuracy"].max()
             .reset_index().to_dict("records"))
    sel = doc["select"]
    return {
        "seed": seed, "name": name, "accuracy": acc, "correct": correct,
        "chosen": {"arm": ev["chosen"]["arm"],
                   "target_test_accuracy": ev["chosen"]["target_test_accuracy"]},
        "label_free": ev.get("label_free"),
        "heldout_auc": doc["discriminate"]["heldout_auc"],
        "proxy_a_distance": doc["discriminate"]["proxy_a_distance"],
        "adversarial": {k: v["proxy_a_distance"] for k, v in
                        doc["discriminate"].get("adversarial", {}).items()
                        if k in ("before", "after")} or None,
        "kept_fraction_per_class": sel["kept_fraction_per_class"],
        "ranked_fraction_per_class": sel.get("ranked_fraction_per_class"),
        "ranked_fraction_shared": sel.get("ranked_fraction_shared"),
        "ranked_fraction_absent": sel.get("ranked_fraction_absent"),
        "dropped_classes": sel["dropped_classes"],
        "val_accuracy_by_fraction": curve,
        "test_accuracy_by_cell": ev.get("by_cell", []),
        "p_target_histograms": {"edges": hist_edges.tolist(), "counts": hists},
        "confusion": ev["method"].get("confusion"),
        "classes": doc["data"]["target_classes"],
        "seconds": doc["seconds_total"],
        "test_images": ev.get("test_images"),
        "val_images": doc["data"]["target"].get("val"),
    }


def summarise(seeds: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every row and of the label-free choice."""
    rows = [r for r in ROWS if any(r in s["accuracy"] for s in seeds)]
    out = {"accuracy": {r: mean_sd([s["accuracy"].get(r) for s in seeds]) for r in rows}}
    out["chosen"] = mean_sd([s["chosen"]["target_test_accuracy"] for s in seeds])
    out["label_free"] = mean_sd([(s["label_free"] or {}).get("target_test_accuracy")
                                  for s in seeds])
    out["heldout_auc"] = mean_sd([s["heldout_auc"] for s in seeds])
    out["ranked_fraction_shared"] = mean_sd([s["ranked_fraction_shared"] for s in seeds])
    out["ranked_fraction_absent"] = mean_sd([s["ranked_fraction_absent"] for s in seeds])
    out["method_minus"] = compare.differences(seeds, ROWS)
    m = out["accuracy"].get("method", {}).get("mean")
    out["method_above_mean_of"] = [r for r in rows if r != "method" and m is not None
                                   and out["accuracy"][r]["mean"] is not None
                                   and m > out["accuracy"][r]["mean"]]
    return out


def summary_lines(summary: dict, test_images: int | None, val_images: int | None) -> list[str]:
    """The comparison a reader can trust, as console lines: per baseline the mean difference
    with its spread and the seeds won."""
    lines = [f"[bench] target test accuracy over {summary['accuracy']['method']['n']} seeds "
             f"({test_images} test images; models chosen on {val_images} val images):"]
    for r, v in summary["accuracy"].items():
        lines.append(f"[bench]   {r:14s} {v['mean']:.3f} ± {v['sd']:.3f}")
    for r, d in summary["method_minus"].items():
        ci = (f"; 95% interval {d['interval'][0]:+.3f} to {d['interval'][1]:+.3f}: "
              f"{d['call']}") if "interval" in d else ""
        lines.append(f"[bench]   method - {r:14s} {d['mean']:+.3f} ± {d['sd']:.3f}  "
                     f"(method won {d['wins']} of {d['n']} seeds{ci})")
    return lines


_png = figures.png_base64


def _plots(seeds: list[dict], summary: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    # 1. target test accuracy of each strategy against the source fraction, mean +- sd (each
    # cell's model chosen on val; the target fraction's best cell per source fraction)
    fig, ax = plt.subplots(figsize=(6, 4))
    by = {}
    for s in seeds:
        best = {}
        for r in s["test_accuracy_by_cell"]:
            key = (r["strategy"], r["source_fraction"])
            if key not in best or r["best_val_accuracy"] > best[key]["best_val_accuracy"]:
                best[key] = r
        for (strategy, frac), r in best.items():
            by.setdefault(strategy, {}).setdefault(frac, []).append(r["target_test_accuracy"])
    for strategy, points in sorted(by.items()):
        xs = sorted(points)
        ax.errorbar(xs, [np.mean(points[x]) for x in xs], [np.std(points[x]) for x in xs],
                    marker="o", capsize=3, label=strategy)
    ax.set_xlabel("source fraction")
    ax.set_ylabel("target test accuracy")
    ax.legend(fontsize=7)
    plots.append((_png(fig), "Target test accuracy by source fraction per strategy (each "
                  "cell's model chosen on target val; mean ± sd over seeds)"))
    # 2. test accuracy of every row, with error bars
    fig, ax = plt.subplots(figsize=(7, 3.5))
    rows = list(summary["accuracy"])
    ax.bar(rows, [summary["accuracy"][r]["mean"] for r in rows],
           yerr=[summary["accuracy"][r]["sd"] for r in rows], capsize=3)
    ax.set_ylabel("target test accuracy")
    ax.tick_params(axis="x", rotation=30)
    plots.append((_png(fig), "Target test accuracy (mean ± sd over seeds)"))
    # 3. p_target histograms (first seed)
    h = seeds[0]["p_target_histograms"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    centers = (np.array(h["edges"][:-1]) + np.array(h["edges"][1:])) / 2
    for key, counts in sorted(h["counts"].items()):
        c = np.asarray(counts, float)
        ax.plot(centers, c / max(c.sum(), 1), marker=".", label=key)
    ax.set_xlabel("p_target")
    ax.set_ylabel("share of split")
    ax.legend(fontsize=7)
    plots.append((_png(fig), f"p_target by domain/split (seed {seeds[0]['seed']})"))
    # 4. confusion matrix of the method's model (first seed)
    if seeds[0]["confusion"]:
        plots.append((figures.confusion(seeds[0]["confusion"], seeds[0]["classes"]),
                      f"Confusion matrix of the method on target test (seed "
                      f"{seeds[0]['seed']})"))
    # 5. per-class kept fraction of the source (selected, and the discriminator's own ranking)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(seeds[0]["kept_fraction_per_class"])
    x = np.arange(len(names))
    kept = [np.mean([s["kept_fraction_per_class"][n] for s in seeds]) for n in names]
    ax.bar(x - 0.2, kept, 0.4, label="selected")
    if seeds[0]["ranked_fraction_per_class"]:
        ranked = [np.mean([s["ranked_fraction_per_class"][n] for s in seeds]) for n in names]
        ax.bar(x + 0.2, ranked, 0.4, label="in D's top fraction (before the class filter)")
    ax.set_xticks(x, names, rotation=30)
    ax.set_ylabel("share of the class kept")
    ax.legend(fontsize=7)
    plots.append((_png(fig), "Per-class kept fraction of source train (mean over seeds); "
                  "classes the target lacks: " + ", ".join(seeds[0]["dropped_classes"])))
    # 6. proxy A-distance before and after adversarial training
    adv = [s["adversarial"] for s in seeds if s["adversarial"]]
    if adv:
        fig, ax = plt.subplots(figsize=(4, 3.5))
        ax.bar(["before", "after"], [np.mean([a["before"] for a in adv]),
                                     np.mean([a["after"] for a in adv])],
               yerr=[np.std([a["before"] for a in adv]), np.std([a["after"] for a in adv])],
               capsize=3)
        ax.set_ylabel("proxy A-distance")
        plots.append((_png(fig), "Domain gap before and after adversarial training (DANN)"))
    return plots


def _html(doc: dict) -> str:
    s = doc["summary"]

    def f(v):
        return "" if v is None else f"{v:.3f}"

    rows = "".join(f"<tr><td>{r}</td><td>{f(v['mean'])}</td><td>{f(v['sd'])}</td>"
                   f"<td>{' '.join(f(x['accuracy'].get(r)) for x in doc['seeds'])}</td></tr>"
                   for r, v in s["accuracy"].items())
    free = s["label_free"]
    parts = [f"<h1>dtl-ray bench: {html.escape(doc['config'] or 'defaults')}</h1>",
             f"<p>{len(doc['seeds'])} seeds; pair: {doc['pair'] or 'the config data'}; "
             f"{doc['seconds']:.0f} s. The method's mean is above the means of: "
             f"<b>{', '.join(s['method_above_mean_of']) or 'none'}</b>.</p>",
             "<table><tr><th>row</th><th>mean</th><th>sd</th><th>per seed</th></tr>"
             f"{rows}</table>",
             "<table><tr><th>method minus</th><th>mean</th><th>sd</th><th>per seed</th>"
             "<th>seeds won</th><th>95% interval (paired bootstrap over test images)</th>"
             "</tr>" + "".join(
                 f"<tr><td>{r}</td><td>{d['mean']:+.3f}</td><td>{f(d['sd'])}</td>"
                 f"<td>{' '.join(f'{x:+.3f}' for x in d.get('per_seed', []))}</td>"
                 f"<td>{d['wins']} of {d['n']}</td><td>"
                 + (f"{d['interval'][0]:+.3f} to {d['interval'][1]:+.3f}: <b>{d['call']}</b>"
                    if "interval" in d else "") + "</td></tr>"
                 for r, d in s.get("method_minus", {}).items()) + "</table>",
             f"<p>Chosen on labeled target val: test accuracy {f(s['chosen']['mean'])} ± "
             f"{f(s['chosen']['sd'])}; chosen without target labels: {f(free['mean'])} ± "
             f"{f(free['sd'])}.</p>"]
    if s["ranked_fraction_absent"]["mean"] is not None:
        shared, absent = s["ranked_fraction_shared"]["mean"], s["ranked_fraction_absent"]["mean"]
        parts.append(f"<p>The discriminator's top fraction keeps {f(shared)} of shared-class "
                     f"source samples and {f(absent)} of absent-class ones.</p>")
    for png, caption in doc.pop("_plots", []):
        parts.append(f"<figure><img src='data:image/png;base64,{png}'><figcaption>"
                     f"{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:3px 8px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>dtl-ray bench</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def run(config_path: str | None, seeds: int, out: str = "runs/bench", pair: str | None = None,
        fractions: list[float] | None = None, overrides: list[str] | None = None) -> dict:
    """Runs `seeds` seeds (0..seeds-1); writes bench.json and bench.html; returns the doc."""
    if seeds < 1:
        raise ConfigError("bench: --seeds must be at least 1")
    if pair is not None:
        demo.target_classes(pair)  # an unknown pair fails here
    overrides = list(overrides or [])
    if fractions:
        overrides.append("finetune.source_fractions=[" + ", ".join(map(str, fractions)) + "]")
    config.load_config(config_path, overrides + ["source.uri=x", "target.uri=y"]
                       if pair is not None else overrides)  # a bad key fails before any run
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    per_seed = [_seed_run(config_path, s, out, pair, overrides) for s in range(seeds)]
    doc = {"config": config_path, "pair": pair, "overrides": overrides, "seeds": per_seed,
           "summary": summarise(per_seed), "seconds": round(time.time() - t0, 1)}
    storage.write_json(os.path.join(out, "bench.json"), doc)
    for line in summary_lines(doc["summary"], per_seed[-1]["test_images"],
                              per_seed[-1]["val_images"]):
        print(line, flush=True)
    doc["_plots"] = _plots(per_seed, doc["summary"])
    with open(os.path.join(out, "bench.html"), "w") as f:
        f.write(_html(doc))
    return doc
