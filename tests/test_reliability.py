"""Faults: a killed Train worker, a killed driver, bad images, crafted checkpoints, secrets."""

import os
import pickle
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SECRET, SMALL_SEARCH, cli_args, copy_run, tiny_overrides
from faults import add_bad_images, registered_checkpoint, wait_for

from dtl_ray import cli, storage
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import decode, manifests, readers
from dtl_ray.errors import CheckpointError, DataError
from dtl_ray.storage import checkpoints, parquet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faulty_run(variant_run):
    """Undecodable and odd-format images in source train, and a Train worker killed after
    pretraining's first checkpoint: injected into conftest's `variant_run` (every stage).

    Returns (report, run dir, bad names, odd names, the killer's result)."""
    v = variant_run
    return v["doc"], v["run"], v["bad"], v["odd"], v["killed"]


def test_killed_train_worker_resumes_from_its_checkpoint(faulty_run, variant_run):
    doc, run, _, _, killed = faulty_run
    assert "error" not in killed, f"the killer failed: {killed.get('error')!r}"
    assert killed.get("pid"), "no worker was killed (training ended first?)"
    assert not killed["stage_done_at_kill"], "pretraining ended before the kill: not a test"
    s = doc["pretrain"]
    assert s["resumed_from_epochs"] and min(s["resumed_from_epochs"]) > 0
    epochs = [c["epoch"] for c in s["curve"]]
    assert epochs == list(range(variant_run["cfg"].pretrain.epochs))  # each once, none lost
    state, _ = checkpoints.read_classifier(str(run / "pretrain" / "model.pt"))
    assert state


def test_killed_scoring_actors_lose_no_row(variant_run):
    """Ray Data restarts a scoring actor that dies (SIGKILL) and retries its batches
    (`max_task_retries`): every row is scored once."""
    killed, doc, run = variant_run["scorers_killed"], variant_run["doc"], variant_run["run"]
    assert "error" not in killed, f"the killer failed: {killed.get('error')!r}"
    assert killed.get("pids") and not killed["stage_done_at_kill"], killed
    sc = doc["score"]
    assert sc["rows_in"] == sc["rows_out"] + sc["rows_rejected"]
    scores = parquet.read_df(str(run / "score" / "scores"))
    manifest = manifests.load(RunLayout(str(run)))
    assert scores["sample_id"].is_unique and len(scores) == sc["rows_out"]
    assert sc["rows_in"] == len(manifest.table) + 1  # (1: the file with a non-UTF-8 name)


def test_killed_trials_resume_from_their_progress(variant_run):
    """Tune retries a trial whose process died (SIGKILL after a trial saved its first epoch);
    the trial continues from its progress file: no trial is lost, none repeats an epoch."""
    killed, doc, run = variant_run["trials_killed"], variant_run["doc"], variant_run["run"]
    assert "error" not in killed, f"the killer failed: {killed.get('error')!r}"
    assert killed.get("pids") and not killed["stage_done_at_kill"], killed
    ft = doc["finetune"]
    assert ft["trials_failed"] == 0 and ft["trials"] == ft["cells"]
    assert ft["trials_resumed"], \
        f"no trial continued from its progress file (killed {killed['pids']}: {killed['seen']})"
    for key, after in ft["trials_resumed"].items():
        _, meta = checkpoints.load(str(run / "finetune" / "progress" / f"{key}.pt"))
        epochs = [m["epoch"] for m in meta["history"]]
        assert epochs == list(range(1, len(epochs) + 1)) and after == meta["resumed"]


def test_bad_images_are_rejected_row_by_row(faulty_run):
    doc, run, bad, odd, _ = faulty_run
    rejected = parquet.read_df(str(run / "rejected.parquet"))
    assert sorted(os.path.basename(p) for p in rejected["path"]) == bad  # no `._gray.png`
    assert (rejected["error"] != "").all()
    reason = dict(zip(rejected["path"].map(os.path.basename), rejected["error"]))
    assert reason["bomb.png"].startswith("too many pixels: 5000x4000")
    assert reason["caf\\xe9.png"] == "file name is not valid UTF-8: rename it"
    assert doc["data"]["rejected"] == len(bad) == 6
    sc = doc["score"]
    assert sc["rows_rejected"] == 6 and sc["rows_in"] == sc["rows_out"] + 6
    scores = parquet.read_df(str(run / "score" / "scores"))
    names = {os.path.basename(p) for p in scores["path"]}
    assert set(odd) <= names and not set(bad) & names  # converted ones are scored


def test_too_many_bad_images_stop_before_training(ray_session, tiny_demo, tmp_path, capsys):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny_demo, root)
    bad, _ = add_bad_images(root, 6)
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    overrides = tiny_overrides(root / "source", root / "target", tmp_path / "out", "many")
    assert cli.main(cli_args(f, overrides)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # before it: Ray Data's own log of the decode pass
    assert last.startswith("dtl-ray: error: ") and "6 of" in last
    assert "data.max_rejected_fraction" in last and any(name in last for name in bad)
    assert not (tmp_path / "out" / "many" / "pretrain").exists()


def kill_driver_when(args, env, ready, what, every=0.2):
    """Starts `dtl-ray run` (`args`) in its own process group and SIGKILLs the group once
    `ready()`; fails if the driver ended before that (the kill must hit a running driver)."""
    victim = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env=env)

    def alive_and_ready():
        if victim.poll() is not None:
            raise AssertionError(f"the driver ended (exit {victim.returncode}) before {what}")
        return ready()

    try:
        wait_for(alive_and_ready, timeout=600, every=every)
        os.killpg(victim.pid, signal.SIGKILL)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)


def test_driver_killed_in_pretraining_resumes_its_train_run(ray_session, tiny_run, tiny_demo,
                                                            tmp_path):
    """The driver (`dtl-ray run`) SIGKILLed inside a Train stage, once pretraining's Train run
    registered its first checkpoint: the same command again resumes that Train run (fixed
    run name, checkpoint in storage) instead of starting over; every epoch runs once and the
    stage reads the same rows as the uninterrupted session run."""
    run = copy_run(tiny_run[1], tmp_path / "pk", [])  # the manifest and the rejected table
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    args = [sys.executable, "-m", "dtl_ray", *cli_args(f, tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", tmp_path, "pk")), "--stages", "pretrain"]
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    kill_driver_when(args, env, lambda: registered_checkpoint(str(run / "pretrain")),
                     "pretraining's first checkpoint", every=0.05)
    layout = RunLayout(str(run))
    assert not layout.is_done("pretrain")
    again = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    s, ref = layout.summary("pretrain"), tiny_run[2]["pretrain"]
    assert s["resumed_from_epochs"] and min(s["resumed_from_epochs"]) > 0, s
    assert [c["epoch"] for c in s["curve"]] == [c["epoch"] for c in ref["curve"]] == [0, 1]
    # the same rows as the uninterrupted run (the weights differ: the resumed epoch draws
    # another data order)
    assert manifests.load(layout).table.equals(
        manifests.load(RunLayout(tiny_run[1])).table)
    state, _ = checkpoints.read_classifier(str(run / "pretrain" / "model.pt"))
    assert state


class _Touch:
    """A pickle that creates a file when it is loaded (code run by unpickling)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_driver_killed_mid_search_resumes_to_the_same_outputs(ray_session, tiny_run, tiny_demo,
                                                             tmp_path):
    """The driver (`dtl-ray run`) SIGKILLed twice: in the score stage once its scoring actors
    are up, then in the search once a trial saved an epoch. Each time the same command runs
    again; the scores come out the same as the uninterrupted session run's (same rows, same
    values: the same models scored them), the search resumes from the trials' files."""
    from ray.util.state import list_actors

    # start from the session run's pretrained model and discriminator: the score stage and
    # the search are what is tested; every driver attaches to the session's Ray, as drivers
    # on a long-lived cluster do
    run = copy_run(tiny_run[1], tmp_path / "crash", ["pretrain", "discriminate"])
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    args = [sys.executable, "-m", "dtl_ray", *cli_args(f, tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", tmp_path, "crash") + [
            "finetune.epochs=3", "finetune.grace_period=3", *SMALL_SEARCH])]
    address = ray_session.get_runtime_context().gcs_address
    env = dict(os.environ, RAY_ADDRESS=address)

    def scoring():
        return list_actors(address=address, filters=[
            ("class_name", "=", "MapWorker(MapBatches(Scorer))"), ("state", "=", "ALIVE")])

    kill_driver_when(args, env, scoring, "its scoring actors were up")
    layout = RunLayout(str(run))
    assert layout.is_done("discriminate") and not layout.is_done("score")

    def trial_progress():
        progress = run / "finetune" / "progress"
        return progress.is_dir() and any(n.endswith(".pt") for n in os.listdir(progress))

    kill_driver_when(args, env, trial_progress, "the search saved a trial's epoch")
    assert layout.is_done("score") and not layout.is_done("finetune")
    # the killed score stage, run again: the rows and scores of the uninterrupted run
    ref = parquet.read_df(os.path.join(tiny_run[1], "score", "scores")).sort_values(
        "sample_id")
    got = parquet.read_df(str(run / "score" / "scores")).sort_values("sample_id")
    assert list(got["sample_id"]) == list(ref["sample_id"])
    for col in ("p_target", "logit_target", "weight", "confidence"):
        np.testing.assert_allclose(got[col], ref[col], rtol=1e-5, atol=1e-6)
    assert (got["pred"].to_numpy() == ref["pred"].to_numpy()).all()
    # whoever can write to the run's storage must not run code in the next driver: Tune's
    # own resume (`Tuner.restore`) would unpickle this file
    opened = tmp_path / "unpickled"
    crafted = pickle.dumps(_Touch(str(opened)))
    (run / "finetune" / "search").mkdir(parents=True, exist_ok=True)
    for name in ("tuner.pkl", "trainable.pkl"):
        (run / "finetune" / "search" / name).write_bytes(crafted)
    second = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not opened.exists(), "a pickle from the run folder was loaded"
    for stage in ("pretrain", "discriminate", "score", "select"):
        assert f"[dtl-ray] {stage}: already done, skipped" in second.stdout
    resumed = re.search(r"\[finetune\] resuming the search: (\d+) of (\d+) trials", second.stdout)
    assert resumed and int(resumed.group(1)) >= 1, second.stdout[-3000:]
    manifest = manifests.load(RunLayout(str(run)))
    scores = parquet.read_df(str(run / "score" / "scores"))
    assert scores["sample_id"].is_unique and len(scores) == len(manifest.table)
    cand = parquet.read_df(str(run / "select" / "candidates.parquet"))
    assert cand["sample_id"].is_unique
    trials = parquet.read_df(str(run / "finetune" / "trials.parquet"))
    assert trials["trial_id"].is_unique
    doc = storage.read_json(str(run / "report.json"))
    assert doc["finetune"]["trials"] == len(trials) and "verdict" in doc


def test_crafted_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"state": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        checkpoints.load_weights(str(path))
    with pytest.raises(CheckpointError):
        checkpoints.load(str(path))
    assert not marker.exists()


def test_bad_model_settings_write_nothing(tiny_demo, tmp_path, capsys):
    not_ckpt = tmp_path / "weights.pt"
    not_ckpt.write_bytes(b"definitely not a checkpoint")
    cases = [
        (["model.backbone=alexnet", "model.image_size=16"], "model.image_size 16"),
        (["model.backbone=vit_b_16", "model.image_size=32"], "cannot take model.image_size 32"),
        ([f"model.weights={not_ckpt}"], "not a loadable checkpoint"),
        (["discriminate.layer=block9"], "not a node of the backbone"),
    ]
    for extra, needle in cases:
        f = tmp_path / "c.yaml"
        f.write_text("name: bad\n")
        args = ["run", str(f)]
        for o in tiny_overrides(tiny_demo / "source", tiny_demo / "target", tmp_path / "out",
                                "bad") + extra:
            args += ["--set", o]
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "out").exists()


def test_no_secret_in_run_outputs_logs_or_console(tiny_run, capsys):
    import ray

    _, run, _ = tiny_run
    logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    checked = 0
    for root in (run, logs):
        for folder, _, files in os.walk(root):
            for name in files:
                with open(os.path.join(folder, name), "rb") as fh:
                    assert SECRET.encode() not in fh.read(), os.path.join(folder, name)
                checked += 1
    assert checked > 20
    assert SECRET not in capsys.readouterr().out


def test_ray_retries_a_read_that_failed_transiently(ray_session, tmp_path):
    """Ray Data retries only system errors unless told: a read that raised after its own
    retries would fail the run. The retry settings the readers use make Ray try the task (a
    map task) and the actor task (the scorers) again, and every row comes out."""
    import ray.data


    # (classes and functions defined here are pickled by value: workers cannot import tests)
    class _FailsOnce:
        """A read that fails with a transient fault on its first attempt (a marker file tells
        the attempts apart, across Ray's retry in a new process)."""

        def __init__(self, marker):
            self.marker = str(marker)

        def __call__(self, batch):
            from dtl_ray.data import decode

            with open(self.marker, "a") as f:
                f.write("x")
            with open(self.marker) as f:
                if len(f.read()) == 1:
                    raise decode.TransientReadError("s3://b/k.png: OSError: HTTP status 503")
            return batch

    readers.configure_context()
    rows = [{"i": i} for i in range(6)]

    task = _FailsOnce(tmp_path / "task")
    out = ray.data.from_items(rows, override_num_blocks=1).map_batches(
        lambda b: task(b), batch_size=None, **decode.TASK_RETRIES).take_all()
    assert sorted(r["i"] for r in out) == list(range(6))
    assert (tmp_path / "task").read_text() == "xx"  # failed once, retried once

    marker = tmp_path / "actor"
    out = ray.data.from_items(rows, override_num_blocks=1).map_batches(
        _FailsOnce, fn_constructor_kwargs={"marker": marker}, batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=1),
        max_task_retries=decode.TASK_RETRIES["max_retries"]).take_all()
    assert sorted(r["i"] for r in out) == list(range(6))
    assert marker.read_text() == "xx"


def test_user_errors_raised_inside_ray_are_found(ray_session):
    """A user error raised in a Ray Data map (or a Train worker) reaches the driver wrapped in
    Ray's exceptions; the CLI finds it and prints its own line."""
    import ray.data

    def _raises_data_error(batch):
        raise DataError("3 image(s) read well before cannot be read now, e.g. /d/x.png")

    readers.configure_context()
    with pytest.raises(Exception) as info:
        ray.data.range(4).map_batches(_raises_data_error).materialize()
    inner = cli.user_error(info.value)
    assert isinstance(inner, DataError)
    assert cli._one_line(inner) == ("3 image(s) read well before cannot be read now, e.g. "
                                    "/d/x.png")
    assert cli.user_error(RuntimeError("a bug")) is None


def test_the_first_pass_that_decodes_an_image_finds_it(ray_session, tiny_demo, tmp_path):
    """No separate inspection: pretraining's own decode (its cached data, before the Train run
    starts) finds a truncated source image; over the limit (0 here) the run stops with one
    line naming it, and the rejected table lists it with the pass that found it. The file
    fixed, the same command reads it: a row found by a stage that did not finish is judged
    again, so the stage runs with every image."""
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny_demo, root)
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    overrides = tiny_overrides(root / "source", root / "target", tmp_path / "out", "changed") + [
        "scaling.max_failures=0", "data.max_rejected_fraction=0"]
    victim = sorted((root / "source" / "train").rglob("*.png"))[5]
    good = victim.read_bytes()
    victim.write_bytes(good[:60])
    args = cli_args(f, overrides, "--stages", "pretrain")
    # the stopped run in a process of its own: its real stderr (Ray Data logs a map's error
    # before raising it; in this process pytest's capture would be Ray's stream)
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    stopped = subprocess.run([sys.executable, "-m", "dtl_ray", *args], env=env,
                             capture_output=True, text=True, timeout=300)
    err = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert err[-1].startswith("dtl-ray: error: 1 of ")
    assert "over data.max_rejected_fraction=0" in err[-1] and victim.name in err[-1]
    layout = RunLayout(str(tmp_path / "out" / "changed"))
    assert not layout.is_done("pretrain")
    listed = parquet.read_df(layout.rejected)
    assert [os.path.basename(p) for p in listed["path"]] == [victim.name]
    assert list(listed["found_in"]) == ["pretrain"] and listed["error"].iloc[0]
    victim.write_bytes(good)  # fixed: the same command reads every image
    assert cli.main(args) == 0
    assert layout.is_done("pretrain") and len(parquet.read_df(layout.rejected)) == 0


def test_the_credentials_patch_holds_only_during_the_search():
    """Tune's list of variables copied into trials loses the AWS secrets while the search runs
    and gets them back after (the patch is not process-wide any more)."""
    from ray.tune.execution import class_cache

    from dtl_ray.raykit import tune

    before = set(class_cache.ENV_VARS_TO_PROPAGATE)
    assert "AWS_SECRET_ACCESS_KEY" in before  # Ray copies it: there is something to keep out
    with tune.credentials_kept_out_of_ray_logs():
        assert not tune.SECRETS & set(class_cache.ENV_VARS_TO_PROPAGATE)
    assert set(class_cache.ENV_VARS_TO_PROPAGATE) == before
