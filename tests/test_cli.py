"""The command table: every command's arguments documented, `--version`, and a config typo
answered without importing torch or Ray."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from dtl_ray import __version__, cli
from dtl_ray.commands import COMMANDS, load
from dtl_ray.contract import registry


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_module_owns_help_arguments_and_main():
    for name in COMMANDS:
        m = load(name)
        assert m.HELP and callable(m.arguments) and callable(m.main), name
    assert set(_subparsers(cli.parser())) == set(COMMANDS)


def test_every_argument_has_help_text():
    missing = [f"{name} {a.dest}" for name, sp in _subparsers(cli.parser()).items()
               for a in sp._actions if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


def test_help_shows_defaults_and_the_stage_names(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in registry.NAMES:
        assert name in out
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert "(default: 64)" in " ".join(capsys.readouterr().out.split())


def test_restart_from_takes_only_stage_names(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "c.yaml", "--restart-from", "scoring"])
    assert e.value.code == 2 and "invalid choice: 'scoring'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"dtl-ray {__version__}"


def test_a_config_typo_is_one_line_without_torch_or_ray(tmp_path):
    """What `dtl-ray run c.yaml --set modle.x=1 --check` loads before it answers: neither torch
    nor Ray nor pandas (each takes seconds to import)."""
    c = tmp_path / "c.yaml"
    c.write_text("source: {uri: s}\ntarget: {uri: t}\n")
    code = ("import sys; from dtl_ray import cli\n"
            f"rc = cli.main(['run', {str(c)!r}, '--set', 'modle.x=1', '--check'])\n"
            "print(rc, sorted(m for m in ('torch', 'ray', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split("\n")[0] == "2 []", out
    assert out.stderr.strip() == ("dtl-ray: error: unknown config key 'modle' (did you mean "
                                  "'model'?)")
