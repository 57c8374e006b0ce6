"""The whole pipeline with source, target and storage on s3:// (moto on 127.0.0.1)."""

import json
import os
import subprocess
import sys

import boto3
import pytest
from conftest import SECRET, SMALL_SEARCH, free_port, tiny_overrides

from dtl_ray import cli, config, pipeline

pytestmark = pytest.mark.slow
BUCKET = "dtl-test"


def _keys(prefix):
    s3 = boto3.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def s3_run(ray_session, s3_server):
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    # the same pair as tiny_demo (seed 3, scale 0.1), written straight to the bucket
    assert cli.main(["demo-data", f"s3://{BUCKET}/data", "--seed", "3", "--scale", "0.1"]) == 0
    cfg = config.load_config(overrides=tiny_overrides(
        f"s3://{BUCKET}/data/source", f"s3://{BUCKET}/data/target", f"s3://{BUCKET}/runs",
        "tiny") + SMALL_SEARCH)
    return pipeline.run(cfg)


def test_outputs_are_in_the_bucket(s3_run):
    keys = _keys("runs/tiny/")
    for must in ("runs/tiny/report.json", "runs/tiny/report.html", "runs/tiny/p_target_hist.png",
                 "runs/tiny/pretrain/model.pt", "runs/tiny/discriminate/discriminator.pt",
                 "runs/tiny/select/candidates.parquet", "runs/tiny/finetune/trials.parquet",
                 "runs/tiny/finetune/models/method.pt", "runs/tiny/rejected.parquet"):
        assert must in keys, must
    assert any(k.startswith("runs/tiny/score/scores/") and k.endswith(".parquet") for k in keys)
    # Ray Train and Tune checkpoints went to the bucket too
    assert any(k.startswith("runs/tiny/pretrain/train/checkpoint_") for k in keys)
    assert any(k.startswith("runs/tiny/finetune/search/") and "/checkpoint_" in k for k in keys)
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key="runs/tiny/report.json")["Body"]
    assert json.loads(body.read())["score"]["rows_out"] == s3_run["score"]["rows_out"]


def test_numbers_match_a_local_run(s3_run, tiny_run):
    _, _, local = tiny_run
    assert s3_run["data"]["source"] == {"train": 210, "val": 28}
    assert s3_run["score"]["rows_in"] == local["score"]["rows_in"]
    assert s3_run["score"]["rows_out"] == local["score"]["rows_out"]
    assert s3_run["select"]["n_source"] == local["select"]["n_source"]
    assert s3_run["pretrain"]["source_val_accuracy"] == pytest.approx(
        local["pretrain"]["source_val_accuracy"], abs=0.1)
    assert s3_run["discriminate"]["heldout_auc"] == pytest.approx(
        local["discriminate"]["heldout_auc"], abs=0.1)
    # the cell both searches ran: discriminator selection of a quarter of the source
    def cell(doc):
        (c,) = [c for c in doc["evaluate"]["by_cell"] if c["arm"] == "method"
                and c["source_fraction"] == 0.25 and c["target_fraction"] == 0.0]
        return c["target_test_accuracy"]

    assert cell(s3_run) == pytest.approx(cell(local), abs=0.2)


def test_transient_errors_were_injected_and_survived(s3_run, s3_faults):
    """Every 25th S3 request of this session failed with 503 SlowDown (see conftest), yet the
    run above completed with every row and nothing wrongly rejected."""
    assert s3_faults.failed >= 10
    assert s3_faults.forwarded >= 20 * s3_faults.failed
    assert s3_run["score"]["rows_in"] == s3_run["score"]["rows_out"] == 322
    assert s3_run["data"]["rejected"] == 0


def test_no_secret_is_written(s3_run):
    s3 = boto3.client("s3")
    for key in _keys("runs/tiny/"):
        if key.endswith((".json", ".yaml", ".html", ".txt", ".log", ".csv", ".pkl", ".parquet")):
            assert SECRET.encode() not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key


def _cli(args, env_extra):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "dtl_ray.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def _config(tmp_path, source):
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {source}}}\ntarget: {{uri: s3://{BUCKET}/data/target}}\n"
                 f"storage: s3://{BUCKET}/runs\n")
    return str(f)


def test_missing_bucket(s3_server, s3_run, tmp_path):
    proc = _cli(["run", _config(tmp_path, "s3://no-such-bucket/data/source")], {})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "dtl-ray: error: bucket 'no-such-bucket' of s3://no-such-bucket/data/source does not "
        "exist (or is not visible with these credentials)"]


def test_unreachable_endpoint(s3_run, tmp_path):
    cfg = _config(tmp_path, f"s3://{BUCKET}/data/source")
    proc = _cli(["run", cfg, "--set", f"s3.endpoint_url=http://127.0.0.1:{free_port()}"], {})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert "cannot read s3://dtl-test/data/source" in lines[0] and "connect" in lines[0].lower()


def test_refused_credentials(tmp_path):
    """A second S3 server that checks credentials refuses ours."""
    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p",
         str(port)], env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        for _ in range(150):  # wait for it to listen
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None, "the second moto server exited"
                time.sleep(0.2)
        else:
            pytest.fail("the second moto server did not listen within 30 s")
        proc = _cli(["run", _config(tmp_path, f"s3://{BUCKET}/data/source")],
                    {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1
        assert "ACCESS_DENIED" in lines[0] and SECRET not in proc.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
