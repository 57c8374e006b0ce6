"""The job command that `submit()` sends: arguments survive the shell whatever they hold."""

import shlex

from dtl_ray.pipeline import jobs


def test_entrypoint_quotes_every_argument():
    odd = ["name=it's", "source.uri=/data/set #2", "finetune.lr=[0.1, 0.3]", "x=$(rm -rf ~)"]
    cmd = jobs.entrypoint_command("config.yaml", odd, ["score", "select"])
    assert shlex.split(cmd) == ["python", "-m", "dtl_ray", "run", "config.yaml",
                                "--set", odd[0], "--set", odd[1], "--set", odd[2],
                                "--set", odd[3], "--stages", "score,select"]
    assert jobs.entrypoint_command("c.yaml") == "python -m dtl_ray run c.yaml"
