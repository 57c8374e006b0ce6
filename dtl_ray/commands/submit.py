"""`dtl-ray submit`: the pipeline as a Ray job on a cluster, as `ray job submit` would send it."""

from __future__ import annotations

import argparse

from dtl_ray.commands import _common

HELP = "submit the pipeline to a Ray cluster as a job, follow its log, return its exit code"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (local paths must exist on the cluster too: "
                   "use s3:// URIs on a real cluster)")
    p.add_argument("--address", default=None,
                   help="the cluster's dashboard, http://HEAD:8265 (default: RAY_ADDRESS, "
                   "else http://127.0.0.1:8265); token authentication is taken from the "
                   "environment (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN), as Ray's own tools do")
    _common.add_overrides(p)
    p.add_argument("--stages", default=None, help="comma-separated stages to run (default: all)")
    p.add_argument("--submission-id", default=None,
                   help="the job's id (default: dtl-ray-<name>-<time>)")
    p.add_argument("--no-wait", action="store_true",
                   help="submit, print the job's id and return (ray job logs/status follow it)")


def main(args: argparse.Namespace) -> int:
    import sys

    from dtl_ray import config
    from dtl_ray.contract import registry
    from dtl_ray.pipeline import jobs

    cfg = config.load_config(args.config, args.overrides)  # a bad key fails here, locally
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    if stages is not None:
        registry.check_names(stages)
    from ray.exceptions import AuthenticationError

    address = jobs.dashboard_address(args.address)
    try:
        sub = jobs.submit(cfg, address=address, stages=stages,
                          submission_id=args.submission_id)
    except (ConnectionError, AuthenticationError) as e:  # no cluster, or it refused the token
        from dtl_ray.errors import ConfigError

        raise ConfigError(f"--address {address}: {' '.join(str(e).split())[:300]} (token "
                          "authentication comes from RAY_AUTH_MODE=token and RAY_AUTH_TOKEN)"
                          ) from None
    print(f"dtl-ray: submitted job {sub.submission_id} to {address} ({sub.status})", flush=True)
    if args.no_wait:
        print(f"dtl-ray: follow it with: ray job logs --address {address} --follow "
              f"{sub.submission_id}")
        return 0
    status = jobs.follow(address, sub.submission_id, sys.stdout)
    print(f"dtl-ray: job {sub.submission_id} {status}")
    return 0 if status == "SUCCEEDED" else 1
