"""Faults: a killed Train worker, a killed driver, bad images, crafted checkpoints, secrets."""

import io
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import SECRET, SMALL_SEARCH, cli_args, copy_run, tiny_overrides
from PIL import Image

from dtl_ray import checkpoints, cli, config, data, pipeline, storage
from dtl_ray.layout import RunLayout

pytestmark = pytest.mark.slow


def _wait_for(predicate, timeout=300, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not reached")


def _checkpoints(stage_dir):
    train = os.path.join(stage_dir, "train")
    return [d for d in os.listdir(train) if d.startswith("checkpoint_")] if os.path.isdir(
        train) else []


def test_killed_train_worker_resumes_from_its_checkpoint(ray_session, tiny_demo, tmp_path):
    from ray.util.state import list_actors

    cfg = config.load_config(overrides=tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", tmp_path, "kill") + [
        "pretrain.epochs=6", "scaling.max_failures=2"])
    stage_dir = tmp_path / "kill" / "pretrain"
    killed = {}

    def killer():
        try:  # after the first epoch's checkpoint, kill a live worker of this session's Ray
            _wait_for(lambda: _checkpoints(stage_dir))
            actors = _wait_for(lambda: list_actors(filters=[
                ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]))
            killed["pid"] = actors[0].pid
            os.kill(actors[0].pid, signal.SIGKILL)
        except Exception as e:  # re-raised below: a thread would swallow it
            killed["error"] = e

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    doc = pipeline.run(cfg, ["pretrain"])
    t.join(timeout=30)
    assert "error" not in killed, f"the killer failed: {killed.get('error')!r}"
    assert killed.get("pid"), "no worker was killed (training ended first?)"
    s = doc["pretrain"]
    assert s["resumed_from_epochs"] and min(s["resumed_from_epochs"]) > 0
    assert [c["epoch"] for c in s["curve"]] == list(range(6))  # each epoch once, none lost
    state, _ = checkpoints.read_classifier(str(stage_dir / "model.pt"))
    assert state


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _add_bad_images(root, n_bad):
    """Undecodable files plus convertible odd formats, in source train/circle."""
    folder = root / "source" / "train" / "circle"
    bad = {"zero.png": b"", "text.png": b"this is not a png", "cut.png": _png(np.zeros(
        (32, 32, 3), np.uint8))[:50], "cut.jpg": b"\xff\xd8\xff\xe0" + b"\0" * 20}
    for i in range(n_bad - len(bad)):
        bad[f"junk{i}.png"] = b"\x89PNG junk"
    for name, blob in list(bad.items())[:n_bad]:
        (folder / name).write_bytes(blob)
    odd = {"gray.png": Image.new("L", (32, 32), 90), "rgba.png": Image.new("RGBA", (40, 30)),
           "pal.png": Image.new("P", (32, 32), 3),
           "deep.png": Image.fromarray(np.full((32, 32), 50000, np.uint16)),
           "huge.png": Image.new("RGB", (4000, 3000), (10, 200, 30))}
    for name, im in odd.items():
        im.save(folder / name)
    return sorted(list(bad)[:n_bad]), sorted(odd)


def test_bad_images_are_rejected_row_by_row(ray_session, tiny_demo, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny_demo, root)
    bad, odd = _add_bad_images(root, 4)
    cfg = config.load_config(overrides=tiny_overrides(
        root / "source", root / "target", tmp_path, "bad") + ["data.max_rejected_fraction=0.05"])
    doc = pipeline.run(cfg, ["pretrain", "discriminate", "score"])
    rejected = data.read_parquet_df(str(tmp_path / "bad" / "rejected.parquet"))
    assert sorted(os.path.basename(p) for p in rejected["path"]) == bad
    assert (rejected["error"] != "").all()
    assert doc["data"]["rejected"] == 4
    sc = doc["score"]
    assert sc["rows_rejected"] == 4 and sc["rows_in"] == sc["rows_out"] + 4
    scores = data.read_parquet_df(str(tmp_path / "bad" / "score" / "scores"))
    names = {os.path.basename(p) for p in scores["path"]}
    assert set(odd) <= names and not set(bad) & names  # converted ones are scored


def test_too_many_bad_images_stop_before_training(tiny_demo, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny_demo, root)
    bad, _ = _add_bad_images(root, 6)
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    args = ["run", str(f)]
    for o in tiny_overrides(root / "source", root / "target", tmp_path / "out", "many"):
        args += ["--set", o]
    proc = subprocess.run([sys.executable, "-m", "dtl_ray.cli", *args], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "6 of" in last and "data.max_rejected_fraction" in last
    assert any(name in last for name in bad)
    assert not (tmp_path / "out" / "many" / "pretrain").exists()


def test_driver_killed_mid_search_resumes_to_the_same_outputs(tiny_run, tiny_demo, tmp_path):
    # start from the finished early stages of the session's run: the search is what is tested
    run = copy_run(tiny_run[1], tmp_path / "crash", ["pretrain", "discriminate", "score",
                                                     "select"])
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    args = [sys.executable, "-m", "dtl_ray", *cli_args(f, tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", tmp_path, "crash") + [
            "finetune.epochs=4", "finetune.grace_period=4", *SMALL_SEARCH])]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)

    def trial_checkpoint():
        if first.poll() is not None:  # the victim must still be running when it is killed
            raise AssertionError(f"the first driver ended (exit {first.returncode}) before "
                                 "the search wrote a trial checkpoint")
        return (run / "finetune" / "search").is_dir() and any(
            "checkpoint_" in d for _, dirs, _ in os.walk(run / "finetune" / "search")
            for d in dirs)

    try:
        _wait_for(trial_checkpoint, timeout=600, every=0.5)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert not RunLayout(str(run)).is_done("finetune")
    assert RunLayout(str(run)).is_done("score")
    second = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("pretrain", "discriminate", "score", "select"):
        assert f"[dtl-ray] {stage}: already done, skipped" in second.stdout
    assert "[finetune] resuming the search" in second.stdout
    manifest = data.load_manifest(RunLayout(str(run)))
    scores = data.read_parquet_df(str(run / "score" / "scores"))
    assert scores["sample_id"].is_unique and len(scores) == len(manifest.table)
    cand = data.read_parquet_df(str(run / "select" / "candidates.parquet"))
    assert cand["sample_id"].is_unique
    trials = data.read_parquet_df(str(run / "finetune" / "trials.parquet"))
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
    with pytest.raises(checkpoints.CheckpointError, match="not a loadable checkpoint"):
        checkpoints.load_weights(str(path))
    with pytest.raises(checkpoints.CheckpointError):
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
