"""Ray jobs: the entrypoint that `jobs/*.py` wrap, and `submit()` for scripts and notebooks.

A job's entrypoint is itself the Train/Tune driver. It is safe to submit again: finished stages
are skipped and interrupted ones resume.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass

import yaml

from dtl_ray import storage

__all__ = ["entrypoint", "submit", "Submission"]

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def entrypoint(argv: list[str], stages: list[str] | None = None) -> int:
    """`--config C [--set k=v ...] [--stages a,b]` -> `dtl-ray run` (exit code 2 on user error)."""
    from dtl_ray import cli

    p = argparse.ArgumentParser(description="dtl-ray Ray job entrypoint")
    p.add_argument("--config", required=True, help="YAML config (relative to the working dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stages", default=None)
    args = p.parse_args(argv)
    run_args = ["run", args.config]
    for o in args.overrides:
        run_args += ["--set", o]
    chosen = ",".join(stages) if stages else args.stages
    if chosen:
        run_args += ["--stages", chosen]
    return cli.main(run_args)


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
    from dtl_ray import pipeline

    if isinstance(config, str):
        cfg = config_mod.load_config(config)
    elif isinstance(config, dict):
        cfg = config_mod.load_config(base=config)
    else:
        cfg = config
    return config_mod.to_dict(pipeline.absolute(cfg))


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
        entry = "python -m dtl_ray.jobs --config config.yaml"
        for o in overrides or []:
            entry += f" --set '{o}'"
        if stages:
            entry += f" --stages {','.join(stages)}"
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
    report_uri = storage.join(cfg["storage"], cfg["name"], "report.json")
    return Submission(sid, status, report=storage.read_json(report_uri))


if __name__ == "__main__":
    import sys

    sys.exit(entrypoint(sys.argv[1:]))
