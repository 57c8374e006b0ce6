"""The config reference (`docs/config.md`), written from the schema itself: every key, its
default and its docstring, so the page cannot drift from the code.

    python -m dtl_ray.config.reference > docs/config.md

`tests/test_docs.py` checks that the page in the repository is what this writes.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json

from dtl_ray.config import schema

__all__ = ["field_docs", "rows", "render"]

INTRO = """# Config reference

<!-- written by `python -m dtl_ray.config.reference > docs/config.md`; edit the docstrings in
dtl_ray/config/schema.py instead (tests/test_docs.py checks this page is up to date) -->

A run is configured by one YAML file; every key below may be given there or on the command
line with `--set dotted.key=value` (the value is parsed as YAML). Every key is checked: a
misspelt key is an error naming it and the closest match, a wrong type or range likewise, one
line and exit code 2 before anything runs. Keys not given take the defaults below, which are
meant for a new photo dataset; `configs/demo.yaml` tunes them for the 32-pixel demo pair and
`configs/digits.yaml` for the digits pair.

Changing a key that a finished stage's outputs depend on (its *fingerprint*, listed per stage
in `dtl_ray/contract/registry.py`) makes a re-run stop with one line naming the keys; `dtl-ray
run ... --restart-from STAGE` makes that stage and every later one again. `scaling` and
`tracking` keys change how a stage runs, never what it means: they can change between runs.
"""


def field_docs(cls: type) -> dict[str, str]:
    """A dataclass's field docstrings (the string literal right after each field)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _shown(value: object) -> str:
    """A default as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value)


def rows(cls: type = schema.PipelineConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default as YAML, doc) for every leaf key, sections in schema order."""
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        value = _default(f)
        if dataclasses.is_dataclass(value):
            out += rows(type(value), f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", _shown(value), docs.get(f.name, "")))
    return out


def render() -> str:
    """The whole page, one table per section."""
    top = field_docs(schema.PipelineConfig)
    parts, section = [INTRO.rstrip("\n")], None
    for key, default, doc in rows():
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            title = f"`{head}`: {top[head]}" if head else "Top level"
            parts.append(f"\n## {title}\n\n| key | default | meaning |\n| --- | --- | --- |")
        cell = doc.replace("|", "\\|").replace("<", "&lt;")
        parts.append(f"| `{key}` | `{default}` | {cell} |")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
