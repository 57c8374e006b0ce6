"""Experiment tracking against a real MLflow tracking server on 127.0.0.1 (sqlite backend,
artifacts served by it), read back through MLflow's client; TensorBoard event files read
back record by record."""

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import cli_args, copy_run, tiny_overrides, tiny_run_overrides

from dtl_ray import cli, storage
from dtl_ray.contract.registry import NAMES
from dtl_ray.storage import parquet

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 (sqlite, artifacts under a temporary folder)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, 9)  # the server's workers too (its own process group)
            raise RuntimeError("the MLflow server did not start: "
                               + (root / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _events(path):
    """(tag, step, value) of every scalar in a TensorBoard event file (TFRecord framing:
    length, its CRC, the record, its CRC)."""
    from tensorboardX.proto import event_pb2

    out = []
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                break
            (n,) = struct.unpack("<Q", head[:8])
            record = f.read(n)
            f.read(4)
            e = event_pb2.Event.FromString(record)
            for v in e.summary.value:
                out.append((v.tag, e.step, v.simple_value))
    return out


def test_a_run_is_logged_to_mlflow_and_tensorboard(mlflow_server, tiny_run, tiny_demo,
                                                   tmp_path, capsys):
    """A finished run (the session's tiny run, copied) run again with tracking on: its stages
    are not run again, but MLflow gets a parent run, one nested run per stage and one per
    fine-tuning trial under the finetune stage's run, per-epoch metrics, the report as an
    artifact; the report links the run. Run once more: the same runs, none added."""
    from mlflow.tracking import MlflowClient

    run = copy_run(tiny_run[1], tmp_path / "tracked", list(NAMES))
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    overrides = tiny_run_overrides(tiny_demo / "source", tiny_demo / "target", tmp_path,
                                   "tracked") + ["tracking.mlflow=true",
                                             f"tracking.mlflow_uri={mlflow_server}",
                                             "tracking.experiment=dtl-ray-test"]
    assert cli.main(cli_args(f, overrides)) == 0
    out = capsys.readouterr().out
    assert "[dtl-ray] MLflow: " in out

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("dtl-ray-test")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "tracked" and parent.info.status == "FINISHED"
    assert parent.data.params["model.backbone"] == "smallcnn"
    doc = storage.read_json(str(run / "report.json"))
    assert parent.data.metrics["method.target_test_accuracy"] == pytest.approx(
        doc["evaluate"]["method"]["target_test_accuracy"])
    stages = {r.info.run_name: r for r in runs
              if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(stages) == sorted(NAMES)
    assert stages["pretrain"].data.metrics["source_val_accuracy"] == pytest.approx(
        doc["pretrain"]["source_val_accuracy"])
    curve = client.get_metric_history(stages["pretrain"].info.run_id, "val_accuracy")
    assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [0, 1]  # 2 epochs
    trials = [r for r in runs
              if r.data.tags.get("mlflow.parentRunId") == stages["finetune"].info.run_id]
    table = parquet.read_df(str(run / "finetune" / "trials.parquet"))
    assert len(trials) == len(table) == doc["finetune"]["trials"] > 0
    for t in trials:
        history = client.get_metric_history(t.info.run_id, "val_accuracy")
        row = table[table["key"] == t.info.run_name.removeprefix("trial ")].iloc[0]
        assert sorted(m.step for m in history) == list(range(1, int(row["epochs_run"]) + 1))
        assert max(m.value for m in history) == pytest.approx(row["best_val_accuracy"])
        assert t.data.params["lr"] == str(row["lr"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "report.json"} <= artifacts
    assert any(a.endswith(".png") for a in artifacts)
    local = client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path))
    with open(local) as fh:
        assert parent.info.run_id in fh.read()  # the report links its MLflow run

    # TensorBoard: pretraining's curve and each trial's history as event files
    tb = run / "tensorboard"
    pre = [p for p in (tb / "pretrain").iterdir() if p.name.startswith("events")]
    assert [s for tag, s, _ in _events(pre[0]) if tag == "val_accuracy"] == [0, 1]
    trial_dirs = [p for p in (tb / "finetune").iterdir() if p.is_dir()]
    assert len(trial_dirs) == len(table)

    # once more: the same parent and nested runs, none added
    assert cli.main(cli_args(f, overrides)) == 0
    again = client.search_runs([exp.experiment_id], max_results=1000)
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    shutil.rmtree(tb)


def test_tracking_without_a_server_is_one_line(tiny_demo, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    overrides = tiny_overrides(tiny_demo / "source", tiny_demo / "target", tmp_path,
                               "t") + ["tracking.mlflow=true"]
    assert cli.main(cli_args(f, overrides)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dtl-ray: error: config key 'tracking.mlflow' is true but there is no "
                   "tracking server: set 'tracking.mlflow_uri' or MLFLOW_TRACKING_URI"]
    assert not (tmp_path / "t").exists()
