"""The console of a run: dtl-ray's lines and progress bars on the terminal, Ray's output in
the run's log file (`--verbose`: everything on the terminal)."""

import pytest
from conftest import cli_args, copy_run, tiny_overrides

pytestmark = pytest.mark.slow


def test_a_run_prints_its_stages_and_logs_rays_output(ray_session, tiny_run, tiny_demo,
                                                      tmp_path, capsys):
    """Pretraining on the tiny pair: a handful of lines (the run, the stage's start and end
    with its figure, a bar over its epochs) on the terminal; Ray's output (the Train workers'
    lines Ray forwards, Ray Data's execution logs) in `<run>/logs/run-*.log`."""
    from dtl_ray import cli

    run = copy_run(tiny_run[1], tmp_path / "quiet", [])  # the manifest: pretrain runs again
    before = set((run / "logs").glob("run-*.log"))  # (the tiny run's own, copied)
    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    args = cli_args(f, tiny_overrides(tiny_demo / "source", tiny_demo / "target", tmp_path,
                                      "quiet"), "--stages", "pretrain")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.replace("\r", "\n").splitlines() if ln.strip()]
    shown = [ln for ln in lines if not ln.startswith("pretrain:")]  # the bar's redraws
    assert len(shown) <= 8, shown
    assert any(ln.startswith("[dtl-ray] pretrain: done in ") for ln in shown)
    assert "2/2" in lines[[i for i, ln in enumerate(lines)
                           if ln.startswith("pretrain:")][-1]]  # the bar reached the end
    logs = sorted(set((run / "logs").glob("run-*.log")) - before)
    assert len(logs) == 1 and f"Ray's output: {logs[0]}" in out
    text = logs[0].read_text()
    assert "RayTrainWorker" in text and "[pretrain] epoch 2/2" in text  # forwarded by Ray
    assert "Dataset" in text  # Ray Data's execution log
    assert "[dtl-ray] pretrain: done in " in text  # dtl-ray's lines are in the log too
    assert "RayTrainWorker" not in out and "Dataset" not in out


@pytest.mark.parametrize("verbose", [False, True])
def test_an_error_inside_the_run_is_one_line_on_the_terminal(ray_session, tiny_demo, tmp_path,
                                                            capsys, verbose):
    """A user error raised while the run holds the console reaches the terminal as one line
    (the console is given back first); `--verbose` writes no log file."""
    from dtl_ray import cli

    f = tmp_path / "c.yaml"
    f.write_text("# Run: dtl-ray run c.yaml\n")
    args = cli_args(f, tiny_overrides(tiny_demo / "source", tiny_demo / "target", tmp_path,
                                      "e"), "--stages", "discriminate")
    assert cli.main(args + (["--verbose"] if verbose else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("dtl-ray: error: stage 'discriminate' needs ['pretrain'] to finish "
                       "first (run with --stages pretrain,discriminate)")
    assert (tmp_path / "e" / "logs").exists() is not verbose


def test_lines_written_to_the_file_descriptors_go_to_the_log(tmp_path, capfd):
    """While a run holds the console, what C++ code writes straight to fd 2 (Ray's core
    worker: `core_worker.cc ... constructor arguments in the object store`) and what child
    processes print goes to the log file, not the terminal; `say` lines reach both, `detail`
    lines only the file; the descriptors are given back afterwards."""
    import os
    import subprocess

    from dtl_ray import console

    with console.quiet(str(tmp_path)) as path:
        console.say("[dtl-ray] a stage: starting")
        console.detail("[pretrain] epoch 1/2")
        os.write(2, b"[2026-12-02 core_worker.cc:123] constructor arguments in the object "
                    b"store\n")
        subprocess.run(["echo", "a child process"], check=True)
    os.write(1, b"after the run\n")
    out, err = capfd.readouterr()
    assert "a stage: starting" in out and "Ray's output" in out
    assert "epoch 1/2" not in out + err and "core_worker" not in out + err
    assert "a child process" not in out + err and "after the run" in out
    text = open(path).read()
    for line in ("a stage: starting", "epoch 1/2", "core_worker.cc", "a child process"):
        assert line in text
