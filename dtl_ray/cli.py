"""The `dtl-ray` command."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources

__all__ = ["main"]

DEMO_CONFIG = "demo.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dtl-ray", description="Discriminator-based transfer "
                                "learning on images, on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo-data", help="write the built-in demo domain pair")
    d.add_argument("out", help="output folder or s3:// URI")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--scale", type=float, default=1.0, help="multiplies the image counts")
    d.add_argument("--pair", choices=["standard", "partial", "digits"], default="standard",
                   help="partial: the target has 3 of the source's 7 classes; digits: real "
                   "images, printed digits (fonts) to handwritten MNIST digits")
    r = sub.add_parser("run", help="run the pipeline")
    r.add_argument("config", help="YAML config")
    r.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config key (dotted), repeatable")
    r.add_argument("--stages", help="comma-separated stages to run (default: all)")
    r.add_argument("--check", action="store_true",
                   help="check the config, the URIs, the model and the data folders, then stop "
                   "(nothing is kept, Ray is not started)")
    r.add_argument("--restart-from", metavar="STAGE", default=None,
                   help="delete this stage and every later one of the run first, so they are "
                   "made again (needed after changing settings a finished stage depends on)")
    m = sub.add_parser("demo", help="demo-data + run with configs/demo.yaml into runs/demo/")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    for sp in (r, m):
        sp.add_argument("--verbose", action="store_true", default=None,
                       help="print Ray's output here (default: in the run's log file, "
                       "<run>/logs/; also DTL_RAY_VERBOSE=1)")
    m.add_argument("--data", default="runs/demo-data", help="where the demo pair is written")
    pk = sub.add_parser("pack", help="pack an image-folder domain into Parquet shards")
    pk.add_argument("src", help="image-folder domain (local or s3://)")
    pk.add_argument("dst", help="where the shards and _packed.json go (local or s3://)")
    pk.add_argument("--rows-per-shard", type=int, default=10000)
    pk.add_argument("--domain", choices=["source", "target"], default=None,
                    help="default: target when it has unlabeled/ or test/, else source")
    pk.add_argument("--seed", type=int, default=0,
                    help="rows are shuffled across shards with this seed (default 0)")
    pk.add_argument("--keep-order", action="store_true",
                    help="keep the listing's order (class by class) instead")
    pf = sub.add_parser("perf", help="performance figures: Ray path against plain PyTorch "
                        "(writes runs/perf/perf.json)")
    pf.add_argument("config", nargs="?", default=None, help="YAML config (default: the demo's)")
    pf.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pf.add_argument("--out", default="runs/perf")
    pf.add_argument("--data", default=None, help="a demo pair to read (default: written to "
                    "OUT/demo-data)")
    pf.add_argument("--n", type=int, default=3000,
                    help="images of the memory figure's 1x run (10x for scoring throughput)")
    pf.add_argument("--repeats", type=int, default=2, help="runs of each scoring variant")
    pf.add_argument("--epochs", type=int, default=3, help="epochs of each training variant")
    pf.add_argument("--only", help="comma-separated figures: score,memory,train,demo")
    sc = sub.add_parser("scale", help="the pipeline at 1x and 10x the demo's size with a small "
                        "object store: driver memory, spilling, stage times (scale.json)")
    sc.add_argument("--out", default="runs/scale")
    sc.add_argument("--factors", type=float, nargs="+", default=[1.0, 10.0])
    sc.add_argument("--store-mb", type=int, default=300, help="object store cap per run")
    sc.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    b = sub.add_parser("bench", help="the method and every baseline over seeds "
                       "(bench.json, bench.html)")
    b.add_argument("config", nargs="?", default=None, help="YAML config (default: the demo's)")
    b.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    b.add_argument("--fractions", type=float, nargs="+", default=None,
                   help="source fractions of the search (finetune.source_fractions)")
    b.add_argument("--pair", choices=["standard", "partial", "digits"], default=None,
                   help="generate this demo pair per seed (default: standard for the demo "
                   "config, else the config's data)")
    b.add_argument("--out", default="runs/bench")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    bl = sub.add_parser("bench-labels", help="labeling the suggested images against as many "
                        "random ones, by simulation on a demo pair over seeds "
                        "(bench_labels.json, bench_labels.html)")
    bl.add_argument("config", nargs="?", default=None, help="YAML config (default: the demo's)")
    bl.add_argument("--pair", choices=["standard", "partial", "digits"], default=None,
                    help="the demo pair whose unlabeled classes are known (default: digits "
                    "for configs/digits.yaml, else standard)")
    bl.add_argument("--budget", type=int, default=50, help="images to label in each pick")
    bl.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    bl.add_argument("--out", default="runs/bench-labels")
    bl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pr = sub.add_parser("predict", help="label images with a finished run's model (Ray Data): "
                        "path, class, confidence, p_target, error")
    pr.add_argument("run_dir")
    pr.add_argument("images", help="a folder or s3:// prefix of images (any depth)")
    pr.add_argument("out", help="output file (.csv, else Parquet; local or s3://)")
    pr.add_argument("--model", default="chosen",
                    help="which of the run's models: chosen (default), method, label_free or "
                    "a baseline")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--gpu", action="store_true", help="score on GPUs")
    ex = sub.add_parser("export", help="write a run's model as TorchScript that loads without "
                        "dtl-ray (class names and preprocessing inside)")
    ex.add_argument("run_dir")
    ex.add_argument("out", help="output .pt file (local or s3://)")
    ex.add_argument("--model", default="chosen")
    sg = sub.add_parser("suggest-labels", help="the unlabeled target images to label next "
                        "(uncertain, unlike anything labeled, target-like; diverse): a CSV and "
                        "a contact sheet")
    sg.add_argument("run_dir")
    sg.add_argument("--budget", type=int, required=True, help="how many images to suggest")
    sg.add_argument("--out", default=None,
                    help="CSV to write (default RUN/suggested_labels.csv; the sheet beside it)")
    sg.add_argument("--model", default="chosen")
    rep = sub.add_parser("report", help="re-render report.html from a run's report.json")
    rep.add_argument("run_dir")
    return p


def _demo_config_path() -> str:
    """configs/demo.yaml of the checkout, else the copy shipped in the package."""
    here = os.path.join(os.getcwd(), "configs", DEMO_CONFIG)
    if os.path.exists(here):
        return here
    return str(resources.files("dtl_ray").joinpath(DEMO_CONFIG))


def _main(args: argparse.Namespace) -> int:
    from dtl_ray import config, storage
    from dtl_ray.contract.layout import RunLayout
    from dtl_ray.data.pairs import demo
    from dtl_ray.pipeline import report, runner

    if args.command == "demo-data":
        storage.check_access(args.out, write=True)
        counts = demo.write_demo(args.out, seed=args.seed, scale=args.scale, pair=args.pair)
        print(f"wrote the demo pair to {args.out}: {counts}")
        return 0
    if args.command == "pack":
        from dtl_ray.data import packing, readers
        from dtl_ray.pipeline import runner

        storage.check_access(args.src)
        storage.check_access(args.dst, write=True)
        # a Ray Data job: on RAY_ADDRESS's cluster, else a local Ray; the S3 endpoint and
        # region (never secrets) go to its workers
        runner.ensure_ray({k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_REGION")
                             if k in os.environ})
        readers.configure_context()
        m = packing.pack(args.src, args.dst, args.rows_per_shard, args.domain,
                         seed=None if args.keep_order else args.seed)
        print(f"packed {m['rows']} images ({m['domain']}: {m['splits']}) into "
              f"{len(m['shards'])} shards at {args.dst}")
        return 0
    if args.command == "predict":
        from dtl_ray.inference import predict

        if args.batch_size < 1:
            raise config.ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
        storage.check_access(args.images)
        counts = predict.predict(args.run_dir, args.images, args.out, args.model,
                                 args.batch_size, args.gpu)
        print(f"labelled {counts['predicted']} of {counts['images']} images with model "
              f"'{args.model}' ({counts['rejected']} cannot be read: listed with their reason) "
              f"-> {args.out}")
        return 0
    if args.command == "suggest-labels":
        from dtl_ray.inference import suggest

        if args.budget < 1:
            raise config.ConfigError(f"--budget must be at least 1, got {args.budget}")
        out = args.out or storage.join(args.run_dir.rstrip("/"), "suggested_labels.csv")
        r = suggest.suggest(args.run_dir, args.budget, out, args.model)
        print(f"suggested {r['suggested']} of {r['unlabeled']} unlabeled target images -> "
              f"{r['csv']} (contact sheet {r['sheet']})")
        return 0
    if args.command == "export":
        from dtl_ray.inference import predict

        info = predict.export(args.run_dir, args.out, args.model)
        print(f"exported model '{args.model}' ({info['backbone']}, {len(info['classes'])} "
              f"classes, input {info['input']}) -> {args.out}")
        return 0
    if args.command == "report":
        layout = RunLayout(args.run_dir)
        doc = storage.read_json(layout.report_json)
        report.write(doc, layout)
        print(f"wrote {layout.report_html}")
        return 0
    if args.command == "bench":
        from dtl_ray.tools import bench

        path = args.config or _demo_config_path()
        is_demo = os.path.basename(path) == DEMO_CONFIG
        pair = args.pair or ("standard" if is_demo else None)
        doc = bench.run(path, args.seeds, args.out, pair, args.fractions, args.overrides)
        s = doc["summary"]
        for row, v in s["accuracy"].items():
            print(f"{row:>14}  {v['mean']:.3f} ± {v['sd']:.3f}")
        free = s["label_free"]
        if free["mean"] is not None:
            print(f"{'label-free':>14}  {free['mean']:.3f} ± {free['sd']:.3f}  (chosen on "
                  f"target val: {s['chosen']['mean']:.3f})")
        print(f"wrote {os.path.join(args.out, 'bench.json')} and bench.html")
        return 0
    if args.command == "bench-labels":
        from dtl_ray.tools import bench_labels

        path = args.config or _demo_config_path()
        pair = args.pair or ("digits" if os.path.basename(path) == "digits.yaml"
                             else "standard")
        doc = bench_labels.run(path, args.seeds, args.out, pair, args.budget, args.overrides)
        s = doc["summary"]
        print(f"target test accuracy over {args.seeds} seeds, {args.budget} more labels "
              f"(mean ± sd):")
        for row in bench_labels.ROWS:
            cells = "  ".join(f"{k} {s['accuracy'][k][row]['mean']:.3f} ± "
                              f"{s['accuracy'][k][row]['sd']:.3f}"
                              for k in ("base", *bench_labels.PICKS))
            d = s["suggested_minus_random"][row]
            print(f"{row:>12}  {cells}  suggested - random {d['mean']:+.3f} ± {d['sd']:.3f} "
                  f"(won {d['wins']} of {d['n']})")
        print(f"wrote {os.path.join(args.out, 'bench_labels.json')} and bench_labels.html")
        return 0
    if args.command == "scale":
        from dtl_ray.tools import scale

        doc = scale.run(args.out, args.factors, args.store_mb, args.overrides)
        for key, ok in doc.get("met", {}).items():
            print(f"{key}: {doc[key]} (target {scale.TARGETS[key]}: "
                  f"{'met' if ok else 'NOT met'})")
        print(f"wrote {os.path.join(args.out, 'scale.json')}")
        return 0
    if args.command == "perf":
        from dtl_ray.tools import perf

        cfg = config.load_config(args.config or _demo_config_path(), args.overrides)
        only = [s.strip() for s in args.only.split(",")] if args.only else None
        perf.run(cfg, out=args.out, data_uri=args.data, n=args.n, repeats=args.repeats,
                 epochs=args.epochs, only=only)
        print(f"wrote {os.path.join(args.out, 'perf.json')}")
        return 0
    if args.command == "demo":
        cfg = config.load_config(_demo_config_path(), args.overrides)
        marker = storage.join(args.data, f"_SEED_{cfg.seed}")
        if not storage.exists(marker):
            print(f"writing the demo pair (seed {cfg.seed}) to {args.data}", flush=True)
            counts = demo.write_demo(args.data, seed=cfg.seed)
            storage.write_json(marker, counts)
        cfg = config.load_config(_demo_config_path(), [
            f"source.uri={storage.join(args.data, 'source')}",
            f"target.uri={storage.join(args.data, 'target')}", *args.overrides])
        doc = runner.run(cfg, verbose=args.verbose)
        print(doc.get("verdict", ""))
        return 0
    cfg = config.load_config(args.config, args.overrides)
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    if args.check:
        found = runner.check(cfg, stages, args.restart_from)
        print(f"dtl-ray: config, storage, model and data are usable: {found}")
        return 0
    doc = runner.run(cfg, stages, restart_from=args.restart_from, verbose=args.verbose)
    print(doc.get("verdict", ""))
    return 0


def _user_errors() -> tuple[type, ...]:
    from dtl_ray.config import ConfigError
    from dtl_ray.data.samples import DataError
    from dtl_ray.inference.predict import RunError
    from dtl_ray.method.models import ModelError
    from dtl_ray.pipeline.lease import LeaseError
    from dtl_ray.storage import StorageError
    from dtl_ray.storage.checkpoints import CheckpointError

    return (ConfigError, DataError, ModelError, CheckpointError, StorageError, LeaseError,
            RunError, FileNotFoundError)


def user_error(e: BaseException) -> BaseException | None:
    """The user error (bad data, config, storage) behind `e`, if any: also one raised inside
    a Ray task, a Ray Data map or a Train worker, found through the causes Ray keeps
    (`cause`, `worker_failures`, `controller_failure`, `__cause__`, `__context__`)."""
    kinds, seen, todo = _user_errors(), set(), [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, kinds):  # (a RayTaskError is also an instance of its cause's class)
            cause = getattr(x, "cause", None)
            return cause if isinstance(cause, kinds) else x
        todo += [getattr(x, "cause", None), getattr(x, "controller_failure", None),
                 x.__cause__, x.__context__, *(getattr(x, "worker_failures", None) or {}).values()]
    return None


def _one_line(e: BaseException) -> str:
    """A user error's message as one line, without the Ray wrapper's traceback."""
    import re

    import ray.exceptions

    if not isinstance(e, ray.exceptions.RayError):
        return str(e)
    text = str(e.args[0]) if getattr(e, "args", None) else str(e)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    # the last line of a traceback Ray kept as text: "package.module.DataError: message"
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip())


def _single_line(text: str) -> str:
    """`text` with every character that ends a line (or does not print) escaped, so that an
    error naming a user's input is one line whatever the input holds."""
    import unicodedata

    return "".join(c if c == " " or unicodedata.category(c)[0] not in "CZ"
                   else c.encode("unicode_escape").decode("ascii") for c in text)


def _not_a_user_error(record) -> bool:
    """A logging filter: Ray Data logs an exception raised in a map (with its traceback, and
    as an error 'in Ray Data or Ray Core internal code', since the map's error is raised as
    itself) before raising it to the driver; for a user error (bad data) the CLI prints its
    own line instead. Ray logs inside its `except` blocks: the exception is the one being
    handled."""
    exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    return exc is None or user_error(exc) is None


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors end in one line on stderr and exit code 2 (also when they
    were raised inside Ray tasks or Train workers)."""
    import logging

    args = _parser().parse_args(argv)
    for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
        quiet = logging.getLogger(name)  # the two that log a map's error before raising it
        if _not_a_user_error not in quiet.filters:
            quiet.addFilter(_not_a_user_error)
    try:
        return _main(args)
    except Exception as e:
        inner = user_error(e)
        if inner is None:
            raise
        print(f"dtl-ray: error: {_single_line(_one_line(inner))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dtl-ray: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
