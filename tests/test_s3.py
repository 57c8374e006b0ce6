"""S3 end to end: the suite's S3 run (`other_run`, conftest: JPEG folders read from the bucket,
the run's storage there) through a proxy that fails every 25th request; demo data written to and
read from the bucket; one-line errors for a missing bucket, an unreachable endpoint and refused
credentials."""

import json
import os
import subprocess
import sys

import boto3
import pytest
from conftest import OTHER_BUCKET, SECRET, free_port

from dtl_ray import cli, storage
from dtl_ray.data import decode, manifests

pytestmark = pytest.mark.slow
BUCKET = OTHER_BUCKET
RUN = "runs/other/"


def _keys(prefix):
    s3 = boto3.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_outputs_are_in_the_bucket(other_run):
    _, _, doc = other_run
    keys = _keys(RUN)
    for name in ("report.json", "report.html", "p_target_hist.png", "pretrain/model.pt",
                 "discriminate/discriminator.pt", "select/candidates.parquet",
                 "finetune/trials.parquet", "finetune/models/method.pt", "rejected.parquet"):
        assert RUN + name in keys, name
    assert any(k.startswith(RUN + "score/scores/") and k.endswith(".parquet") for k in keys)
    # Ray Train checkpoints, Tune's experiment and the trials' progress files went to the
    # bucket too
    assert any(k.startswith(RUN + "pretrain/train/checkpoint_") for k in keys)
    assert any(k.startswith(RUN + "finetune/search/") for k in keys)
    assert any(k.startswith(RUN + "finetune/progress/cell") and k.endswith(".pt") for k in keys)
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=RUN + "report.json")["Body"]
    assert json.loads(body.read())["score"]["rows_out"] == doc["score"]["rows_out"]


def test_transient_errors_were_injected_and_survived(other_run, s3_faults):
    """Every 25th S3 request of this session failed with 503 SlowDown (see conftest), yet the
    run completed with every row and nothing wrongly rejected."""
    _, folders, doc = other_run
    assert s3_faults.failed >= 10
    assert s3_faults.forwarded >= 20 * s3_faults.failed
    assert doc["score"]["rows_in"] == doc["score"]["rows_out"] == len(folders.table)
    assert doc["data"]["rejected"] == 0


def test_no_secret_is_written(other_run):
    s3 = boto3.client("s3")
    keys = _keys(RUN)
    assert len(keys) > 20
    for key in keys:
        if key.endswith((".json", ".yaml", ".html", ".txt", ".log", ".csv", ".pkl", ".parquet")):
            assert SECRET.encode() not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key


def test_demo_data_written_to_the_bucket_reads_back_like_local_files(s3_server, tmp_path):
    """`demo-data` straight to S3 gives the same rows, labels and bytes as the same pair
    written locally, read through S3 listing."""
    boto3.client("s3").create_bucket(Bucket="dtl-demo")
    args = ["--seed", "3", "--scale", "0.03"]
    assert cli.main(["demo-data", "--out", "s3://dtl-demo/data", *args]) == 0
    assert cli.main(["demo-data", "--out", str(tmp_path), *args]) == 0
    remote = manifests.build("s3://dtl-demo/data/source", "s3://dtl-demo/data/target",
                                 [".png"])
    local = manifests.build(str(tmp_path / "source"), str(tmp_path / "target"), [".png"])
    a = local.table.sort_values("sample_id").reset_index(drop=True)
    b = remote.table.sort_values("sample_id").reset_index(drop=True)
    assert len(a) > 50 and list(a["sample_id"]) == list(b["sample_id"])
    assert list(a["label"]) == list(b["label"]) and local.classes == remote.classes
    for i in range(0, len(a), 7):  # the same bytes (the pipeline's S3 reads: `other_run`)
        assert storage.read_bytes(b["path"][i]) == storage.read_bytes(a["path"][i]), a["path"][i]


def _cli(args, env_extra):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "dtl_ray.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def _config(tmp_path, source):
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {source}}}\ntarget: {{uri: s3://{BUCKET}/data/tgt}}\n"
                 f"storage: s3://{BUCKET}/runs\n")
    return str(f)


def test_missing_bucket(s3_server, other_run, tmp_path):
    proc = _cli(["run", _config(tmp_path, "s3://no-such-bucket/data/source")], {})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "dtl-ray: error: bucket 'no-such-bucket' of s3://no-such-bucket/data/source does not "
        "exist (or is not visible with these credentials)"]


def test_unreachable_endpoint(other_run, tmp_path):
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


def test_faults_that_outlast_pyarrows_retries_lose_no_row(s3_server, s3_faults, monkeypatch):
    """Consecutive 503s for one image, more than pyarrow's S3 client tries: our own retry
    (`storage.retry`) tries again and the image is decoded, not rejected. (pyarrow gets 2
    tries here, `DTL_RAY_S3_ATTEMPTS`, instead of 10: its backoff made the same test with 12
    faults take 95 s.)"""
    import io

    import numpy as np
    from PIL import Image

    s3 = boto3.client("s3")
    bucket = "dtl-faults"
    s3.create_bucket(Bucket=bucket)
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (200, 30, 30)).save(buf, format="PNG")
    s3.put_object(Bucket=bucket, Key="img/red.png", Body=buf.getvalue())
    monkeypatch.setenv("DTL_RAY_S3_ATTEMPTS", "2")
    s3_faults.fail_next("img/red.png", 5)  # pyarrow's 2 tries fail twice; the 3rd round reads
    out = decode.decode_batch({"path": np.array([f"s3://{bucket}/img/red.png"], dtype=object)}, 8)
    assert s3_faults.targeted_failed["img/red.png"] == 5  # every planned fault was served
    assert out["error"][0] == "" and out["image"][0, 0, 0].tolist() == [200, 30, 30]
