"""A real Ray head (`ray start --head`), the pipeline submitted to it as a Ray job."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
from conftest import copy_run, free_port, tiny_overrides

import dtl_ray
from dtl_ray import config

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)


@pytest.fixture
def ray_head():
    """A head node on 127.0.0.1 in its own process group, stopped even when the test fails."""
    port, dash = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Unix socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    head = subprocess.Popen(
        [os.path.join(BIN, "ray"), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--num-cpus=2", "--disable-usage-stats",
         # every fixed default port elsewhere: the test session's own Ray holds the defaults
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
            except OSError:
                if time.time() > deadline or head.poll() is not None:
                    raise RuntimeError("the Ray head did not come up") from None
                time.sleep(1)
        yield address
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=3)  # `ray start --block` stops the node on SIGTERM
            except subprocess.TimeoutExpired:
                pass
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_pipeline_job_on_a_real_head(ray_head, tiny_run, tiny_demo, tmp_path):
    # the session's run up to the search; the job runs the last stage as a Ray job's driver
    copy_run(tiny_run[1], tmp_path / "out" / "job", ["pretrain", "discriminate", "score",
                                                     "select", "finetune"])
    cfg = config.load_config(overrides=tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", tmp_path / "out", "job"))
    result = dtl_ray.submit(cfg, address=ray_head, wait=True, timeout_s=900)
    assert result.status == "SUCCEEDED", result.logs
    assert result.submission_id.startswith("dtl-ray-job-")
    assert result.report["name"] == "job"
    assert result.report["score"]["rows_in"] == result.report["score"]["rows_out"]
    assert (tmp_path / "out" / "job" / "report.html").exists()
    # submitting again is safe: every stage is skipped
    again = dtl_ray.submit(cfg, address=ray_head, wait=True, timeout_s=300)
    assert again.status == "SUCCEEDED"
    from ray.job_submission import JobSubmissionClient

    logs = JobSubmissionClient(ray_head).get_job_logs(again.submission_id)
    assert logs.count("already done, skipped") == 6
