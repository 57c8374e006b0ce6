"""The `dtl-ray` command: the parser built from the command table (`dtl_ray.commands`), and
the one-line error path.

A user error (bad config, data, storage; `dtl_ray.errors.USER_ERRORS`) ends in one line on
stderr and exit code 2, also when it was raised inside a Ray task, a Ray Data map or a Train
worker. Classifying an error imports neither torch nor Ray (Ray's wrapper is only looked at
when Ray is already loaded), so a typo in a config answers in well under a second.
"""

from __future__ import annotations

import argparse
import sys

from dtl_ray import __version__
from dtl_ray.commands import COMMANDS, load
from dtl_ray.errors import USER_ERRORS

__all__ = ["main", "user_error"]


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each argument's default (not for flags, nor where there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or action.required:
            return action.help or ""
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dtl-ray", formatter_class=_Help,
                                description="Discriminator-based transfer learning on images, "
                                "on Ray. Start with `dtl-ray demo`.")
    p.add_argument("--version", action="version", version=f"dtl-ray {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = load(name)
        sp = sub.add_parser(name, help=module.HELP, description=module.HELP,
                            formatter_class=_Help)
        module.arguments(sp)
    return p


def user_error(e: BaseException) -> BaseException | None:
    """The user error (bad data, config, storage) behind `e`, if any: also one raised inside
    a Ray task, a Ray Data map or a Train worker, found through the causes Ray keeps
    (`cause`, `worker_failures`, `controller_failure`, `__cause__`, `__context__`)."""
    kinds, seen, todo = USER_ERRORS, set(), [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, kinds):  # (a RayTaskError is also an instance of its cause's class)
            cause = getattr(x, "cause", None)
            return cause if isinstance(cause, kinds) else x
        todo += [getattr(x, "cause", None), getattr(x, "controller_failure", None),
                 x.__cause__, x.__context__, *(getattr(x, "worker_failures", None) or {}).values()]
    return None


def _one_line(e: BaseException) -> str:
    """A user error's message as one line, without the Ray wrapper's traceback."""
    import re

    ray_exceptions = sys.modules.get("ray.exceptions")  # never imported just for this
    if ray_exceptions is None or not isinstance(e, ray_exceptions.RayError):
        return str(e)
    text = str(e.args[0]) if getattr(e, "args", None) else str(e)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    # the last line of a traceback Ray kept as text: "package.module.DataError: message"
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip())


def _single_line(text: str) -> str:
    """`text` with every character that ends a line (or does not print) escaped, so that an
    error naming a user's input is one line whatever the input holds."""
    import unicodedata

    return "".join(c if c == " " or unicodedata.category(c)[0] not in "CZ"
                   else c.encode("unicode_escape").decode("ascii") for c in text)


def _not_a_user_error(record) -> bool:
    """A logging filter: Ray Data logs an exception raised in a map (with its traceback, and
    as an error 'in Ray Data or Ray Core internal code', since the map's error is raised as
    itself) before raising it to the driver; for a user error (bad data) the CLI prints its
    own line instead. Ray logs inside its `except` blocks: the exception is the one being
    handled."""
    exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    return exc is None or user_error(exc) is None


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the command; a user error is one line and exit code 2."""
    import logging

    args = parser().parse_args(argv)
    for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
        quiet = logging.getLogger(name)  # the two that log a map's error before raising it
        if _not_a_user_error not in quiet.filters:
            quiet.addFilter(_not_a_user_error)
    try:
        return load(args.command).main(args)
    except Exception as e:
        inner = user_error(e)
        if inner is None:
            raise
        print(f"dtl-ray: error: {_single_line(_one_line(inner))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dtl-ray: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
