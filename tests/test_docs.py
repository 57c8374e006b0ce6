"""The docs stay in step with the code: the README's code map names every module, the config
reference is what the schema writes (every key with its default), and the README and the
schema point at the method page inside the repository."""

from __future__ import annotations

import dataclasses
import pathlib
import re

from dtl_ray.config import PipelineConfig, reference, schema

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dtl_ray"


def _code_map() -> dict[str, str]:
    """The README's code map: first cell (a package, or `(bottom)`/`(top)`) -> the row."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The code"):]
    section = section[:section.index("\n## ")]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    return {ln.split("|")[1].strip().strip("`"): ln for ln in rows[1:]}


def test_the_code_map_names_every_module():
    rows, missing = _code_map(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).parts
        if len(rel) > 1 and rel[-1] == "__init__.py" and rel[0] != "storage":
            continue  # a package's own __init__ (storage's holds its API)
        if len(rel) == 1:  # the package's top-level modules: in the (bottom) or (top) row
            found = any(f"`{rel[0]}`" in r for k, r in rows.items() if k.startswith("("))
        else:
            row = rows.get(f"{rel[0]}/", "")
            found = all(f"`{p}`" in row or f"`{p}/`" in row for p in rel[1:])
        if not found:
            missing.append("/".join(rel))
    assert missing == []


def test_the_config_reference_is_written_from_the_schema():
    """docs/config.md is what `python -m dtl_ray.config.reference` writes."""
    assert (ROOT / "docs" / "config.md").read_text() == reference.render()


def test_the_config_reference_has_every_key_with_its_default():
    text = (ROOT / "docs" / "config.md").read_text()
    table = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| `([^`]*)` \|",
                                                         text, re.M)}

    def leaves(obj, prefix=""):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                yield from leaves(v, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", v

    for key, value in leaves(PipelineConfig()):
        assert key in table, key
        shown = table[key]
        if isinstance(value, bool):
            assert shown == str(value).lower(), key
        elif isinstance(value, (int, float)):
            assert float(shown) == float(value), key
        elif value is None:
            assert shown == "null", key
        elif isinstance(value, str) and value:
            assert shown == value, key
    assert reference.field_docs(schema.FinetuneConfig)["epochs"].startswith("Most epochs")


def test_the_method_page_is_in_the_repository_and_linked():
    assert (ROOT / "docs" / "method.md").exists()
    assert "docs/method.md" in (ROOT / "README.md").read_text()
    assert "docs/method.md" in (PACKAGE / "config" / "schema.py").read_text()
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *PACKAGE.rglob("*.py")]:
        assert "shared/docs" not in path.read_text(), path
