"""`dtl-ray bench-labels`: does labeling the images `suggest-labels` picks help more than
labeling as many images drawn at random? Measured by simulation on a demo pair, whose unlabeled
target images' classes are known (`demo.unlabeled_class`; the pipeline never reads them).

For each seed:

1. the base run: the whole pipeline on the seed's pair, as `dtl-ray bench` runs it;
2. two picks of `budget` unlabeled target images from it: `suggest-labels`' (the base run's
   chosen model) and a seeded random draw from the same pool (decodable images);
3. per pick, a run that starts as a copy of the base run's finished stages up to `select`, with
   the picked images moved in its manifest from target/unlabeled to target/train under their
   true class; fine-tuning and evaluation run again with the same settings, val and test.

The stages up to `select` are kept because they cannot differ: pretraining reads only the
source, and the discriminator and scores see target train and unlabeled as one domain. The
picks' runs therefore differ from each other only in which images got labels.

Writes `<out>/bench_labels.json` (per seed and mean ± sd over seeds), `bench_labels.html`
with a plot, and each pick as a CSV with a contact sheet (`<base>-<pick><budget>.csv`).
"""

from __future__ import annotations

import html
import os
import shutil
import time

import numpy as np
import pandas as pd

from dtl_ray import config, pipeline, storage
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.registry import NAMES
from dtl_ray.data import manifests, samples
from dtl_ray.data.pairs import demo
from dtl_ray.errors import ConfigError
from dtl_ray.inference import suggest
from dtl_ray.pipeline import figures
from dtl_ray.tools import bench
from dtl_ray.tools.compare import mean_sd

__all__ = ["ROWS", "PICKS", "run", "picks", "pick_run", "relabel", "copy_upstream", "summarise"]

ROWS = ["method", "chosen", "target_only"]
"""The accuracies compared: the method's model, the model chosen on target val, and the
model trained on labeled target images alone (what the labels give by themselves)."""

PICKS = ["suggested", "random"]

UPSTREAM = NAMES[:NAMES.index("finetune")]
"""The stages a pick's run keeps from the base run."""


def copy_upstream(base_root: str, dest_root: str) -> None:
    """Copies a finished run's manifest, class list, rejects, weights and the folders of its
    stages before fine-tuning to `dest_root` (a local folder), so a run there starts at
    fine-tuning."""
    keep = {"manifest.parquet", "classes.json", "rejected.parquet", "weights", *UPSTREAM}
    os.makedirs(dest_root, exist_ok=True)
    for name in sorted(os.listdir(base_root)):
        if name not in keep:
            continue
        src, dst = os.path.join(base_root, name), os.path.join(dest_root, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def relabel(layout: RunLayout, paths: list[str], class_of) -> int:
    """Moves the unlabeled target images at `paths` to target/train in the run's manifest,
    labeled `class_of(path)` (a class name). Returns how many moved.

    Raises:
        ConfigError: a path that is not an unlabeled target image of the run, or a
            class the run does not know.
    """
    manifest = manifests.load(layout)
    t = manifest.table
    index = {p: i for i, p in enumerate(manifest.classes)}
    rows = t.index[(t[samples.DOMAIN] == "target") & (t[samples.SPLIT] == "unlabeled")
                   & t[samples.PATH].isin(set(paths))]
    if len(rows) != len(set(paths)):
        raise ConfigError(f"{len(set(paths)) - len(rows)} of the {len(set(paths))} "
                                 f"images to label are not unlabeled target images of "
                                 f"{layout.root}")
    labels = [class_of(p) for p in t.loc[rows, samples.PATH]]
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ConfigError(f"classes {unknown} are not classes of {layout.root}")
    t.loc[rows, samples.SPLIT] = "train"
    t.loc[rows, samples.LABEL] = [index[c] for c in labels]
    manifests.save(manifest, layout)
    return len(rows)


def picks(base_root: str, budget: int, seed: int, out_stem: str,
           class_of) -> dict[str, pd.DataFrame]:
    """The suggested and the random pick (each with the base model's prediction and the true
    class), written as CSVs with contact sheets; read back when they exist."""
    files = {k: f"{out_stem}-{k}{budget}.csv" for k in PICKS}
    if all(os.path.exists(f) for f in files.values()):
        return {k: pd.read_csv(f) for k, f in files.items()}
    pool = suggest.score_pool(base_root)
    if len(pool.table) < budget:
        raise ConfigError(f"--budget {budget}: the base run has only "
                                 f"{len(pool.table)} decodable unlabeled target images")
    chosen = suggest.pick(pool.table["value"].to_numpy(), pool.features, pool.labeled, budget)
    drawn = np.random.default_rng(seed).choice(len(pool.table), budget, replace=False)
    out = {}
    for k, idx, how in (("suggested", chosen, suggest.RANKED),
                        ("random", drawn, f"drawn at random (seed {seed}) for bench-labels")):
        suggest.write(pool.table.iloc[list(idx)], files[k], base_root, how)
        df = pd.read_csv(files[k])
        out[k] = df
    return out


def pick_run(cfg_args: list[str], config_path: str | None, base_root: str, name: str,
              out: str, picked: pd.DataFrame, class_of) -> dict:
    layout = RunLayout(os.path.join(out, name))
    if not layout.is_done(UPSTREAM[-1]):
        copy_upstream(base_root, layout.root)
        moved = relabel(layout, list(picked["path"]), class_of)
        print(f"[bench-labels] {name}: {moved} images moved to target/train", flush=True)
    cfg = config.load_config(config_path, [*cfg_args, f"name={name}"])
    doc = pipeline.run(cfg)
    truth = [class_of(p) for p in picked["path"]]
    return {"name": name, "accuracy": _rows(doc),
            "labeled": doc["data"]["target"]["train"],
            "classes": {c: truth.count(c) for c in sorted(set(truth))},
            "base_model_wrong": int(sum(str(p) != t for p, t in
                                        zip(picked["predicted"], truth))),
            "mean_value": float(picked["value"].mean())}


def _rows(doc: dict) -> dict:
    acc = bench.accuracies(doc)
    return {"method": acc["method"], "chosen": doc["evaluate"]["chosen"]["target_test_accuracy"],
            "target_only": acc.get("target_only")}


def _seed(config_path: str | None, seed: int, out: str, pair: str, budget: int,
          overrides: list[str]) -> dict:
    name, args = bench.seed_config(config_path, seed, out, pair, overrides)
    print(f"[bench-labels] seed {seed}: base run {name}", flush=True)
    base_doc = pipeline.run(config.load_config(config_path, [*args, f"name={name}"]))
    base_root = os.path.join(out, name)

    def class_of(path: str) -> str:
        return demo.unlabeled_class(pair, path)

    picked = picks(base_root, budget, seed, os.path.join(out, name), class_of)
    runs = {k: pick_run(args, config_path, base_root, f"{name}-{k}{budget}", out, picked[k],
                         class_of) for k in PICKS}
    rec = {"seed": seed, "base": {"name": name, "accuracy": _rows(base_doc),
                                  "labeled": base_doc["data"]["target"]["train"]},
           **runs}
    print(f"[bench-labels] seed {seed}: " + "; ".join(
        f"{k} {rec[k]['accuracy']['method']:.3f}" for k in ("base", *PICKS)) +
        " (method's target test accuracy)", flush=True)
    return rec


def summarise(seeds: list[dict]) -> dict:
    """Mean ± sd over seeds of each row for the base run and each pick, and of suggested minus
    random, with the seeds the suggestion won."""
    out: dict = {"accuracy": {k: {r: mean_sd([s[k]["accuracy"][r] for s in seeds])
                                  for r in ROWS} for k in ("base", *PICKS)}}
    out["suggested_minus_random"] = {}
    for r in ROWS:
        d = [s["suggested"]["accuracy"][r] - s["random"]["accuracy"][r] for s in seeds
             if s["suggested"]["accuracy"][r] is not None
             and s["random"]["accuracy"][r] is not None]
        out["suggested_minus_random"][r] = {**mean_sd(d), "wins": sum(x > 0 for x in d),
                                            "ties": sum(x == 0 for x in d)}
    out["base_model_wrong"] = {k: mean_sd([s[k]["base_model_wrong"] for s in seeds])
                               for k in PICKS}
    return out


def _plot(summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(ROWS))
    for i, k in enumerate(("base", *PICKS)):
        v = [summary["accuracy"][k][r] for r in ROWS]
        ax.bar(x + (i - 1) * 0.27, [m["mean"] or 0 for m in v], 0.27,
               yerr=[m["sd"] or 0 for m in v], capsize=3, label=k)
    ax.set_xticks(x, ROWS)
    ax.set_ylabel("target test accuracy")
    lows = [summary["accuracy"][k][r]["mean"] for k in ("base", *PICKS) for r in ROWS]
    ax.set_ylim(max(0.0, min(v for v in lows if v is not None) - 0.1), 1.0)
    ax.legend(fontsize=8)
    return figures.png_base64(fig)


def _html(doc: dict) -> str:
    s, budget = doc["summary"], doc["budget"]

    def f(m):
        return "" if m["mean"] is None else f"{m['mean']:.3f} ± {m['sd']:.3f}"

    head = "".join(f"<th>{r}</th>" for r in ROWS)
    rows = "".join(f"<tr><td>{k}</td>" + "".join(f"<td>{f(s['accuracy'][k][r])}</td>"
                                                 for r in ROWS) + "</tr>"
                   for k in ("base", *PICKS))
    diff = "".join(f"<td>{d['mean']:+.3f} ± {d['sd']:.3f} (won {d['wins']} of {d['n']})</td>"
                   if d["mean"] is not None else "<td></td>"
                   for d in s["suggested_minus_random"].values())
    sheets = "".join(f"<li>seed {x['seed']}: <a href='{html.escape(x['base']['name'])}-{k}"
                     f"{budget}.html'>{k}</a></li>" for x in doc["seeds"] for k in PICKS)
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:3px 8px}")
    wrong = s["base_model_wrong"]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>dtl-ray bench-labels"
            f"</title><style>{style}</style></head><body><h1>Label {budget} more target images:"
            f" suggested or random?</h1><p>{len(doc['seeds'])} seeds of the {doc['pair']} pair;"
            f" target test accuracy after fine-tuning again (mean ± sd); {doc['seconds']:.0f} s."
            f" The base run's model was wrong on {f(wrong['suggested'])} of the suggested "
            f"images and {f(wrong['random'])} of the random ones.</p>"
            f"<table><tr><th></th>{head}</tr>{rows}<tr><td>suggested − random</td>{diff}</tr>"
            f"</table><figure><img src='data:image/png;base64,{_plot(s)}'><figcaption>Target "
            "test accuracy without new labels (base), with the suggested ones and with random "
            f"ones (mean ± sd over seeds)</figcaption></figure><p>The picks (contact sheets):"
            f"</p><ul>{sheets}</ul></body></html>")


def run(config_path: str | None, seeds: int, out: str, pair: str, budget: int,
        overrides: list[str] | None = None) -> dict:
    """Runs `seeds` seeds (0..seeds-1); writes bench_labels.json and bench_labels.html.

    Raises:
        ConfigError: bad arguments or config keys (before any run starts).
    """
    if seeds < 1 or budget < 1:
        raise ConfigError("bench-labels: --seeds and --budget must be at least 1")
    demo.target_classes(pair)  # an unknown pair fails here
    overrides = list(overrides or [])
    config.load_config(config_path, [*overrides, "source.uri=x", "target.uri=y"])
    if storage.local_path(out) is None:
        raise ConfigError("bench-labels writes its runs to a local folder (--out)")
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    per_seed = [_seed(config_path, s, out, pair, budget, overrides) for s in range(seeds)]
    doc = {"config": config_path, "pair": pair, "budget": budget, "overrides": overrides,
           "seeds": per_seed, "summary": summarise(per_seed),
           "seconds": round(time.time() - t0, 1)}
    storage.write_json(os.path.join(out, "bench_labels.json"), doc)
    with open(os.path.join(out, "bench_labels.html"), "w") as fh:
        fh.write(_html(doc))
    return doc
