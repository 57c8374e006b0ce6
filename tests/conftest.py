"""Shared fixtures: one local Ray for the session, tiny generated datasets."""

import contextlib
import os

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
# every Ray the tests start (this process's and the heads they launch): its dashboard waits
# up to 2 minutes for its modules instead of 30 s, which a loaded 2-core machine overran
# ("Module MetricsHead failed to start"), failing the session's fixture
os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "120")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SECRET = "dtl-test-secret-8f3a1c"  # the tests check it is never written anywhere


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(flags: list[str], env: dict, prefix: str):
    """`ray start --head --block` with `flags` (a free dashboard port on 127.0.0.1 and every
    other default port moved: the test session's own Ray holds the defaults), in its own
    process group (with every process it starts, an autoscaler's nodes included), killed
    with the group at the end. Yields (the process, the dashboard's URL) once the dashboard
    answers (401 counts: a head with token authentication is up)."""
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    import urllib.error
    import urllib.request

    dash = free_port()
    temp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Unix socket paths are limited
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
         *flags, "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--disable-usage-stats",
         *[f"--{flag}={free_port()}" for flag in (
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
             "object-manager-port")],
         f"--temp-dir={temp}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # it answers (401: it wants the token): it is up
                break
            except OSError:
                if time.time() > deadline or head.poll() is not None:
                    raise RuntimeError("the Ray head did not come up") from None
                time.sleep(1)
        yield head, address
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=5)  # `ray start --block` stops its node on SIGTERM
            except subprocess.TimeoutExpired:
                pass
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_faults():
    """An S3-compatible server (moto, its own process) on 127.0.0.1 behind a proxy that fails
    every 25th request with 503 SlowDown, and the AWS variables pointing at the proxy: every
    S3 test runs through transient errors.

    Started before Ray so that Ray's workers inherit the endpoint and credentials. moto runs
    in a process of its own: as a thread it would share the test driver's GIL.
    """
    import socket
    import subprocess
    import sys
    import time

    from s3_faults import FaultyProxy

    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
         "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    try:
        with FaultyProxy(port, every=25) as proxy:
            os.environ.update(AWS_ACCESS_KEY_ID="dtl-test-key", AWS_SECRET_ACCESS_KEY=SECRET,
                              AWS_REGION="us-east-1",
                              AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}")
            yield proxy
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_server(s3_faults):
    """The S3 endpoint the tests use (the faulty proxy in front of moto)."""
    return f"http://127.0.0.1:{s3_faults.port}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray (2 CPUs, dashboard on 127.0.0.1) shared by every test that needs it."""
    import ray

    if not ray.is_initialized():
        from dtl_ray.raykit import connect

        ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1",
                 include_dashboard=True, logging_level="WARNING",
                 runtime_env=connect.runtime_env())
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The demo pair at a tenth of its size (seed 3)."""
    from dtl_ray.data.pairs import demo

    root = tmp_path_factory.mktemp("tiny_demo")
    demo.write_demo(str(root), seed=3, scale=0.1)
    return root


def tiny_overrides(source, target, storage, name):
    """A config small enough that the whole pipeline runs in about a minute on 2 cores."""
    return [f"source.uri={source}", f"target.uri={target}", f"storage={storage}",
            f"name={name}", "model.backbone=smallcnn", "model.image_size=32",
            "pretrain.epochs=2", "discriminate.epochs=3", "finetune.epochs=2",
            "finetune.grace_period=1", "finetune.source_fractions=[0.25]",
            "finetune.target_fractions=[0.0, 0.5]", "finetune.lr=[0.003]",
            "finetune.train_layers=[all]", "finetune.num_samples=1",
            "finetune.weight_alphas=[1.0]", "data.batch_size=32",
            "score.batch_size=64",
            # trials and the teacher in their own processes (the default; the simulated
            # cluster test puts them on TorchTrainers)
            "finetune.workers_per_trial=0", "finetune.teacher_workers=0",
            # the consistency term costs about 2.5x a step: on in the runs that test it
            # (`tiny_run`, held pool; the simulated cluster, streamed to Train workers)
            "finetune.consistency_weight=0"]


CONSISTENCY = ["finetune.consistency_weight=1"]


def tiny_run_overrides(source, target, storage, name):
    """`tiny_run`'s config (`tiny_overrides` with the consistency term on): for tests that run
    again on a copy of its folder."""
    return tiny_overrides(source, target, storage, name) + CONSISTENCY


# for runs that test plumbing (packed data, another backbone, DANN), not the search: 6 cells
# (every arm once, and one soft cell of the method) instead of 11
SMALL_SEARCH = ["finetune.target_fractions=[0.0]"]


def cli_args(config_file, overrides, *extra):
    """`dtl-ray run CONFIG --set ... EXTRA` as the argument list of `cli.main`."""
    return ["run", str(config_file), *[a for o in overrides for a in ("--set", o)], *extra]


@pytest.fixture(scope="session")
def tiny_run(ray_session, tiny_demo, tmp_path_factory):
    """The pipeline on the tiny demo, run through the CLI one `--stages` call per stage (so
    the CLI end to end and stage-by-stage resumption are what every later test starts from);
    returns (cfg, run dir, stage summaries)."""
    from dtl_ray import cli, config
    from dtl_ray.contract.layout import RunLayout
    from dtl_ray.contract.registry import NAMES

    out = tmp_path_factory.mktemp("runs")
    config_file = out / "tiny.yaml"
    config_file.write_text("# Run: dtl-ray run tiny.yaml\nname: tiny\n")
    overrides = tiny_run_overrides(tiny_demo / "source", tiny_demo / "target", out, "tiny")
    for stage in NAMES:
        assert cli.main(cli_args(config_file, overrides, "--stages", stage)) == 0, stage
    layout = RunLayout(os.path.join(out, "tiny"))
    return (config.load_config(str(config_file), overrides), layout.root,
            {s: layout.summary(s) for s in NAMES})


def copy_run(run_dir, dest, done):
    """A copy of a finished run's folder at `dest` in which only the stages `done` (a prefix
    of the pipeline) are finished: later stages' folders are left out, so a test that needs
    the early stages starts where they ended instead of running them again."""
    import shutil

    from dtl_ray.contract.registry import NAMES

    assert list(done) == list(NAMES[:len(done)]), done
    skip = set(NAMES[len(done):])
    shutil.copytree(run_dir, dest, ignore=lambda d, names: [
        n for n in names if d == str(run_dir) and (n in skip or (skip and n.startswith("report")))])
    return dest


@pytest.fixture(scope="session")
def variant_run(ray_session, tmp_path_factory):
    """The method's variants and two faults in one run of every stage (each is checked by its
    own test module): the partial pair (the target has 3 of the source's 7 classes, a fifth of
    its size), IWAN weights, adversarial mode (DANN) with fine-tuning from the adapted
    backbone, the all-source cell's candidates streamed through Ray Data; undecodable and
    odd-format images in source train, and a Train worker killed with SIGKILL after
    pretraining's first checkpoint.

    Returns a dict: cfg, run (dir), doc (report), bad and odd (image names), killed (the
    victim's `pid` or the killer's `error`)."""
    from faults import (
        BOMB_PIXELS,
        add_a_bomb_and_a_bad_name,
        add_bad_images,
        kill_a_scoring_actor,
        kill_a_train_worker_after_first_checkpoint,
        kill_a_trial_after_its_first_epoch,
    )

    from dtl_ray import config, pipeline
    from dtl_ray.data.pairs import demo

    root = tmp_path_factory.mktemp("variants")
    demo.write_demo(str(root / "data"), seed=2, scale=0.2, pair="partial")
    bad, odd = add_bad_images(root / "data", 4)
    bad = sorted(bad + add_a_bomb_and_a_bad_name(root / "data"))
    cfg = config.load_config(overrides=tiny_overrides(
        root / "data" / "source", root / "data" / "target", root / "runs", "variants") + [
        "score.weighting=iwan", "pretrain.epochs=4", "discriminate.epochs=4",
        "discriminate.mode=adversarial", "discriminate.dann_epochs=2", "finetune.init=adapted",
        "scaling.max_failures=2", "data.max_rejected_fraction=0.05",
        f"data.max_image_pixels={BOMB_PIXELS - 1}", *SMALL_SEARCH,
        # the all-source cell's candidates (1.3 MB decoded) streamed through Ray Data, smaller
        # cells held by their trials (the teacher and trials on TorchTrainers: the simulated
        # cluster test, where a Train start costs no core the rest of the suite waits for)
        "finetune.in_memory_mb=1"])
    run = root / "runs" / "variants"
    thread, killed = kill_a_train_worker_after_first_checkpoint(run / "pretrain")
    scorer, scorers_killed = kill_a_scoring_actor(run / "score", run)
    trial, trials_killed = kill_a_trial_after_its_first_epoch(run / "finetune")
    doc = pipeline.run(cfg)
    for t in (thread, scorer, trial):
        t.join(timeout=30)
    return {"cfg": cfg, "run": run, "doc": doc, "bad": bad, "odd": odd, "killed": killed,
            "scorers_killed": scorers_killed, "trials_killed": trials_killed}


# the other dataset's images per (domain, split) and class (`other_run`)
OTHER_COUNTS = {("src", "train"): 16, ("src", "val"): 4, ("tgt", "train"): 2,
                ("tgt", "unlabeled"): 6, ("tgt", "val"): 3, ("tgt", "test"): 4}
OTHER_HUES = {"apple": (200, 30, 30), "leaf": (30, 160, 40), "sky": (40, 80, 220)}
OTHER_BUCKET = "dtl-test"


def _write_other(root, rng):
    """JPEG files (`.JPG`) in nested folders; the target lacks the class `sky` (but its
    unlabeled pool holds some)."""
    import io

    from PIL import Image

    for (domain, split), n in OTHER_COUNTS.items():
        for cls, colour in OTHER_HUES.items():
            if domain == "tgt" and cls == "sky" and split != "unlabeled":
                continue
            for i in range(n):
                base = np.array(colour) * (0.6 if domain == "tgt" else 1.0)
                arr = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                folder = "misc" if split == "unlabeled" else cls
                path = root / domain / split / folder / f"batch{i % 2}" / f"{cls}{i}.JPG"
                path.parent.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG")
                path.write_bytes(buf.getvalue())


@pytest.fixture(scope="session")
def other_run(ray_session, s3_server, tmp_path_factory):
    """A dataset that is not the demo, and the suite's S3 run: JPEG folders with other class
    names; the source packed with `dtl-ray pack` into local shards, the target uploaded as
    folders to S3 (through the faulty proxy), the run's storage on S3 (Train and Tune
    checkpoints included); a torchvision backbone (shufflenet_v2_x0_5: its checkpoints are
    1.5 MB where resnet18's are 45 MB, which made this run six minutes on moto) started from a
    locally saved torchvision checkpoint, with D on an intermediate node (`stage3`).

    Returns (cfg, the local folders' manifest, report)."""
    import boto3
    import torch
    import torchvision

    from dtl_ray import cli, config, pipeline
    from dtl_ray.data import manifests

    tmp_path = tmp_path_factory.mktemp("other")
    folders = tmp_path / "d"
    _write_other(folders, np.random.default_rng(0))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=OTHER_BUCKET)
    for path in sorted((folders / "tgt").rglob("*.JPG")):
        s3.upload_file(str(path), OTHER_BUCKET, f"data/tgt/{path.relative_to(folders / 'tgt')}")
    src, tgt = str(tmp_path / "packed" / "src"), f"s3://{OTHER_BUCKET}/data/tgt"
    assert cli.main(["pack", str(folders / "src"), src, "--rows-per-shard", "16"]) == 0
    weights = tmp_path / "shufflenet_local.pth"
    torch.save(torchvision.models.shufflenet_v2_x0_5(weights=None).state_dict(), weights)
    overrides = tiny_overrides(src, tgt, f"s3://{OTHER_BUCKET}/runs", "other") + [
        "model.backbone=shufflenet_v2_x0_5", f"model.weights={weights}",
        "discriminate.layer=stage3",
        # every stage resizes the 40 px images' shorter side to 36 and crops the centre 32
        "model.image_size=32", "model.resize_size=36", *SMALL_SEARCH]
    cfg = config.load_config(overrides=overrides)
    manifest = manifests.build(str(folders / "src"), str(folders / "tgt"),
                                   cfg.data.extensions)
    return cfg, manifest, pipeline.run(cfg)
