"""`dtl-ray report`: render report.html again from a run's report.json."""

from __future__ import annotations

import argparse

HELP = "re-render report.html from a run's report.json"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run's folder (local or s3://)")


def main(args: argparse.Namespace) -> int:
    from dtl_ray import storage
    from dtl_ray.contract.layout import RunLayout
    from dtl_ray.errors import RunError
    from dtl_ray.pipeline import report

    layout = RunLayout(args.run_dir)
    if not storage.exists(layout.report_json):
        raise RunError(f"{args.run_dir} has no report.json: not a run's folder, or its run "
                       "has not finished (running its config again resumes it)")
    report.write(storage.read_json(layout.report_json), layout)
    print(f"wrote {layout.report_html}")
    return 0
