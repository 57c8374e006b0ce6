"""User errors end in one clear line and exit code 2, before anything is written."""

import os
import subprocess
import sys

import pytest

from dtl_ray import cli


def _run(args, capsys):
    code = cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_unknown_key(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("source: {uri: a}\ntarget: {uri: b}\npretrain: {epocs: 2}\n")
    code, err = _run(["run", str(f)], capsys)
    assert code == 2 and len(err) == 1
    assert "unknown config key 'pretrain.epocs'" in err[0]


def test_missing_folder_writes_nothing(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {tmp_path}/nope}}\ntarget: {{uri: {tmp_path}/nope2}}\n"
                 f"storage: {tmp_path}/out\n")
    code, err = _run(["run", str(f)], capsys)
    assert code == 2 and len(err) == 1 and "source folder not found" in err[0]
    assert not (tmp_path / "out").exists()


def test_empty_split(tmp_path, capsys):
    for rel in ("s/train/a/x.png", "s/val/a/x.png", "t/train/a/x.png", "t/test/a/x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "t" / "val").mkdir()
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {tmp_path}/s}}\ntarget: {{uri: {tmp_path}/t}}\n")
    code, err = _run(["run", str(f)], capsys)
    assert code == 2 and "target split 'val' is empty" in err[0]


def test_unknown_stage(tiny_demo, tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {tiny_demo}/source}}\ntarget: {{uri: {tiny_demo}/target}}\n"
                 f"storage: {tmp_path}/out\n")
    code, err = _run(["run", str(f), "--stages", "pretrain,polish"], capsys)
    assert code == 2 and "unknown stage(s) ['polish']" in err[0]


@pytest.mark.parametrize("override,needle", [
    ("pretrain.epochs=abc", "'pretrain.epochs': expected an integer"),
    ("model.image_size=2", "'model.image_size'"),
])
def test_console_script_bad_override(tmp_path, override, needle):
    f = tmp_path / "c.yaml"
    f.write_text("source: {uri: a}\ntarget: {uri: b}\n")
    proc = subprocess.run([sys.executable, "-m", "dtl_ray.cli", "run", str(f), "--set", override],
                          capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_gpus_asked_for_on_a_cluster_without_any(ray_session, tiny_demo, tmp_path, capsys):
    """scaling.use_gpu on a cluster with no GPUs (and no autoscaler to add them) stops at
    once with one line, instead of Train waiting for GPUs that never come."""
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {tiny_demo}/source}}\ntarget: {{uri: {tiny_demo}/target}}\n"
                 f"storage: {tmp_path}/out\nscaling: {{use_gpu: true, num_workers: 2}}\n")
    code, err = _run(["run", str(f)], capsys)
    assert code == 2 and len(err) == 1
    assert err[0] == ("dtl-ray: error: scaling.use_gpu=true needs 2 GPU(s) (one per Train "
                      "worker, scaling.num_workers=2); the cluster can hold 0 (its nodes and "
                      "what its autoscaler can add): set scaling.use_gpu=false or give the "
                      "cluster GPU nodes")
    from dtl_ray.contract.layout import RunLayout

    layout = RunLayout(str(tmp_path / "out" / "run"))
    assert os.path.exists(layout.manifest)  # (the run's folder is where this looks)
    assert not layout.is_done("pretrain")  # stopped before any Ray work


def test_requests_no_node_can_hold(ray_session, tiny_demo, tmp_path, capsys):
    """A worker, actor or trial asking for more CPUs than any node has (the session's one node
    has 2) stops at once with one line naming the key, instead of waiting forever."""
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {tiny_demo}/source}}\ntarget: {{uri: {tiny_demo}/target}}\n"
                 f"storage: {tmp_path}/out\nscaling: {{cpus_per_worker: 3}}\n")
    code, err = _run(["run", str(f)], capsys)
    assert code == 2 and len(err) == 1
    assert "asks for 3 CPU(s) (scaling.cpus_per_worker=3)" in err[0]
    assert "no node of the cluster" in err[0] and "lower scaling.cpus_per_worker" in err[0]
    # 2 fits the node, but a Train worker holding both CPUs leaves none to read its images
    code, err = _run(["run", str(f), "--set", "scaling.cpus_per_worker=2"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "take all 2 CPUs that the cluster can hold" in err[0], err


def test_check_answers_for_this_machine_without_a_cluster(tiny_demo, tmp_path, capsys,
                                                          monkeypatch):
    """`--check` with no RAY_ADDRESS asks this machine (no GPU here) what the run's local Ray
    would: GPUs asked for, none here -> one line, exit 2; with RAY_ADDRESS set it leaves the
    question to the cluster (asked once the run joins it)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {tiny_demo}/source}}\ntarget: {{uri: {tiny_demo}/target}}\n"
                 f"storage: {tmp_path}/out\nmodel: {{backbone: smallcnn, image_size: 32}}\n")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, err = _run(["run", str(f), "--check", "--set", "scaling.use_gpu=true"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "scaling.use_gpu=true asks for 1 GPU(s)" in err[0] and "has 0" in err[0]
    code, err = _run(["run", str(f), "--check", "--set", f"scaling.cpus_per_worker="
                      f"{(os.cpu_count() or 1) + 1}"], capsys)
    assert code == 2 and "scaling.cpus_per_worker" in err[0]
    # Train workers holding every CPU leave none to read their images: a stage that would wait
    # forever (`make perf`'s hang) is one line instead
    cpus = os.cpu_count() or 1
    code, err = _run(["run", str(f), "--check", "--set", f"scaling.cpus_per_worker={cpus}"],
                     capsys)
    assert code == 2 and len(err) == 1, err
    assert f"take all {cpus} CPUs of this machine" in err[0] and "read their images" in err[0]
    assert _run(["run", str(f), "--check"], capsys)[0] == 0
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a cluster: its GPUs are asked later
    assert _run(["run", str(f), "--check", "--set", "scaling.use_gpu=true"], capsys)[0] == 0
    assert not (tmp_path / "out").exists()
