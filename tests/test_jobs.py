"""A real Ray head (`ray start --head`), the pipeline submitted to it as a Ray job."""

import os
import subprocess
import sys

import pytest
from conftest import copy_run, free_port, ray_head, tiny_run_overrides

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)


def client_env(token: str | None) -> dict:
    """The environment of a client process of the test's head: with `token`, Ray's token
    authentication (as cluster/README.md tells users to set it), else none."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


SUBMIT = """
import json, sys
import dtl_ray
from dtl_ray import config
try:
    cfg = config.load_config(overrides=json.loads(sys.argv[2]))
    r = dtl_ray.submit(cfg, address=sys.argv[1], wait=True, timeout_s=900)
    print(json.dumps({"status": r.status, "id": r.submission_id, "report": r.report,
                      "logs": r.logs}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def submit_from(address: str, overrides: list[str], token: str | None) -> dict:
    """`dtl_ray.submit(..., wait=True)` from a fresh client process (token authentication
    is set up once per process, so the test session's own Ray never sees it)."""
    import json

    proc = subprocess.run([sys.executable, "-c", SUBMIT, address, json.dumps(overrides)],
                          capture_output=True, text=True, timeout=1200, env=client_env(token))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def token_head():
    """A head node on 127.0.0.1 in its own process group with Ray's token authentication on
    (as every cluster config here has it), stopped even when the test fails.

    Returns (dashboard address, token)."""
    import secrets

    token = secrets.token_hex(32)
    with ray_head([f"--port={free_port()}", "--node-ip-address=127.0.0.1", "--num-cpus=2"],
                  client_env(token), "rj") as (_, address):
        yield address, token


def test_pipeline_job_on_a_real_head(token_head, tiny_run, tiny_demo, tmp_path):
    address, token = token_head
    # the session's run up to the search; the job runs the last stage as a Ray job's driver
    copy_run(tiny_run[1], tmp_path / "out" / "job", ["pretrain", "discriminate", "score",
                                                     "select", "finetune"])
    overrides = [str(o) for o in tiny_run_overrides(
        tiny_demo / "source", tiny_demo / "target", tmp_path / "out", "job")]
    # the head wants its token: a client without it, or with another, is refused
    for wrong in (None, "0" * 64):
        refused = submit_from(address, overrides, wrong)
        assert refused["error"] == "AuthenticationError", refused
        assert "token" in refused["message"]
    assert not (tmp_path / "out" / "job" / "report.html").exists()
    result = submit_from(address, overrides, token)
    assert result["status"] == "SUCCEEDED", result["logs"]
    assert result["id"].startswith("dtl-ray-job-")
    assert result["report"]["name"] == "job"
    assert result["report"]["score"]["rows_in"] == result["report"]["score"]["rows_out"]
    assert (tmp_path / "out" / "job" / "report.html").exists()
    # submitting again is safe: every stage is skipped
    again = submit_from(address, overrides, token)
    assert again["status"] == "SUCCEEDED"
    logs = subprocess.run(
        [sys.executable, "-c", "import sys; from ray.job_submission import JobSubmissionClient;"
         "print(JobSubmissionClient(sys.argv[1]).get_job_logs(sys.argv[2]))", address,
         again["id"]], capture_output=True, text=True, timeout=120, env=client_env(token))
    assert logs.stdout.count("already done, skipped") == 6, logs.stderr[-2000:]


def test_dtl_ray_submit_follows_the_job_and_returns_its_exit(token_head, tiny_run, tiny_demo,
                                                              tmp_path):
    """`dtl-ray submit CONFIG --address URL --set ...` on the real head: the job's log comes
    back as it runs, exit 0 when the job succeeds, non-zero when it fails; a client without
    the head's token gets one line and exit 2; `--no-wait` returns at once with the id."""
    address, token = token_head
    copy_run(tiny_run[1], tmp_path / "out" / "sub", ["pretrain", "discriminate", "score",
                                                     "select", "finetune"])
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray submit c.yaml --address URL\nname: sub\n")
    sets = [a for o in tiny_run_overrides(tiny_demo / "source", tiny_demo / "target",
                                          tmp_path / "out", "sub") for a in ("--set", str(o))]

    def submit(*extra, token=token):
        return subprocess.run([os.path.join(BIN, "dtl-ray"), "submit", str(f), "--address",
                               address, *sets, *extra], capture_output=True, text=True,
                              timeout=900, env=client_env(token))

    ok = submit()
    assert ok.returncode == 0, (ok.stdout[-3000:], ok.stderr[-3000:])
    assert "submitted job dtl-ray-sub-" in ok.stdout and "SUCCEEDED" in ok.stdout
    assert "[dtl-ray] evaluate: starting" in ok.stdout  # the job's own log, followed
    assert (tmp_path / "out" / "sub" / "report.html").exists()
    # a job that fails (a stage whose upstream is missing in a new run): its exit is not 0
    failed = submit("--set", "name=other", "--stages", "evaluate")
    assert failed.returncode == 1, (failed.stdout[-2000:], failed.stderr[-2000:])
    assert "needs" in failed.stdout and "FAILED" in failed.stdout
    refused = submit(token=None)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--address" in refused.stderr
    quick = submit("--no-wait")
    assert quick.returncode == 0 and "ray job logs --address" in quick.stdout
