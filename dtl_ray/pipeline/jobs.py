"""`submit()`: the pipeline as a Ray job, from scripts and notebooks (Ray's Jobs API).

The job runs `python -m dtl_ray run config.yaml` on the cluster: the entrypoint is itself the
Train/Tune driver, and it is safe to submit again (finished stages are skipped, interrupted
ones resume).
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from dataclasses import dataclass

import yaml

from dtl_ray import storage
from dtl_ray.contract.layout import RunLayout

__all__ = ["submit", "Submission", "entrypoint_command", "follow", "dashboard_address"]

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Submission:
    """What `submit` returns."""

    submission_id: str
    status: str
    report: dict | None = None
    """report.json of the run, when waited for and SUCCEEDED."""
    logs: str = ""
    """The job's log tail, when waited for and not SUCCEEDED."""


def _config_dict(config) -> dict:
    from dtl_ray import config as config_mod
    from dtl_ray.pipeline import preflight

    if isinstance(config, str):
        cfg = config_mod.load_config(config)
    elif isinstance(config, dict):
        cfg = config_mod.load_config(base=config)
    else:
        cfg = config
    return config_mod.to_dict(preflight.absolute(cfg))


def entrypoint_command(config_file: str, overrides: list[str] | None = None,
                       stages: list[str] | None = None) -> str:
    """The job's shell command: `dtl-ray run` through `python -m`, every argument quoted."""
    args = ["python", "-m", "dtl_ray", "run", config_file]
    for o in overrides or []:
        args += ["--set", o]
    if stages:
        args += ["--stages", ",".join(stages)]
    return shlex.join(args)


def dashboard_address(address: str | None) -> str:
    """The Jobs API address as `ray job submit` takes it: `address`, else `RAY_ADDRESS`, else
    the local head's dashboard (http://127.0.0.1:8265); a bare host:port gets http://."""
    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    return address if "://" in address else f"http://{address}"


def follow(address: str, submission_id: str, out) -> str:
    """Writes the job's log to `out` as it comes, until the job ends; returns its status."""
    import asyncio

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError:  # the log stream closed early: the status still tells the end
        pass
    status = str(client.get_job_status(submission_id))
    while status not in TERMINAL:
        time.sleep(1)
        status = str(client.get_job_status(submission_id))
    return status


def submit(config, address: str = "http://127.0.0.1:8265", wait: bool = False,
           overrides: list[str] | None = None, stages: list[str] | None = None,
           submission_id: str | None = None, runtime_env: dict | None = None,
           timeout_s: float = 24 * 3600, poll_s: float = 2.0) -> Submission:
    """Submits the pipeline as a Ray job through the Jobs API.

    Args:
        config: a YAML path, a dict, or a PipelineConfig (local paths are made absolute, so
            they must exist on the cluster; use s3:// URIs for real clusters).
        address: the cluster's dashboard address (http://HEAD:8265).
        wait: block until the job ends; then return its report (or its log tail).
        overrides: `key=value` overrides applied on the cluster.
        stages: run only these stages.
        submission_id: a fixed id (must be new to the cluster); default `dtl-ray-<name>-<time>`.
        runtime_env: merged into the job's runtime env (e.g. {"pip": [...]}, env_vars).

    Returns:
        Submission with the id, the last status and, when waited for, the report.
    """
    from ray.job_submission import JobSubmissionClient

    cfg = _config_dict(config)
    client = JobSubmissionClient(address)
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        entry = entrypoint_command("config.yaml", overrides, stages)
        env = {"working_dir": d, **(runtime_env or {})}
        sid = submission_id or f"dtl-ray-{cfg['name']}-{int(time.time())}"
        ready_by = time.time() + 120
        while True:
            try:
                client.submit_job(entrypoint=entry, runtime_env=env, submission_id=sid)
                break
            except RuntimeError as e:  # a head that just started has no job agent yet
                if "No available agent" not in str(e) or time.time() > ready_by:
                    raise
                time.sleep(2)
    if not wait:
        return Submission(sid, str(client.get_job_status(sid)))
    deadline = time.time() + timeout_s
    status = str(client.get_job_status(sid))
    while status not in TERMINAL and time.time() < deadline:
        time.sleep(poll_s)
        status = str(client.get_job_status(sid))
    if status != "SUCCEEDED":
        return Submission(sid, status, logs=client.get_job_logs(sid)[-4000:])
    report_uri = RunLayout.of(cfg["storage"], cfg["name"]).report_json
    return Submission(sid, status, report=storage.read_json(report_uri))

