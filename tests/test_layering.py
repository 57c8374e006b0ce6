"""The house's layering: each package of `dtl_ray` imports only packages below it, no stage
imports another, and no module imports itself back through others.

Read from the source (every `import`, function-level ones too: a lazy import is still a
dependency), so the test runs in a fraction of a second and needs neither torch nor Ray.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "dtl_ray"

# bottom to top: a package may import its own modules and those of the layers below it
LAYERS: list[set[str]] = [
    {"errors"},  # the user errors, caught by the command line
    {"config"},  # the schema and its loading
    {"storage"},  # local paths and S3, atomic writes, checkpoints, Parquet
    {"console"},  # the run's terminal and log file
    {"contract"},  # the run layout, the stage registry, the results
    {"data"},  # manifests, decoding, Ray Data readers, score files, the pairs
    {"method"},  # PyTorch only: models, loops, weighting, the search design
    {"raykit"},  # Ray plumbing: connecting, Train, Tune, actor pools, capacity
    {"stages"},  # one module or package per stage
    {"pipeline"},  # the orchestrator: preflight, runner, fingerprints, report, jobs
    {"inference"},  # predict and suggest, from a finished run
    {"tools"},  # benchmarks and figures
    {"commands"},  # the command line's commands
    {"cli", "__main__", ""},  # the entry points and the package's own `__init__`
]


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(path: pathlib.Path, known: dict) -> set[str]:
    """The package's modules that a file imports: `from P import m` counts as importing the
    submodule `P.m` where there is one, else `P`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in known]
            names = subs or [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import dtl_ray.x.y` of a package attribute
                name = name.rpartition(".")[0]
            if name.startswith("dtl_ray"):
                found.add(name)
    return found


def graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports(p, known) - {m} for m, p in known.items()}


def package(module: str) -> str:
    """The top-level package of a module ('' for `dtl_ray` itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(module: str) -> int:
    pkg = package(module)
    for i, names in enumerate(LAYERS):
        if pkg in names:
            return i
    raise AssertionError(f"{module}: its package {pkg!r} is in no layer of tests/test_layering")


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, ts in g.items() for t in ts
                  if layer(t) > layer(m))


def across_stages(g: dict[str, set[str]]) -> list[str]:
    def stage(m: str) -> str | None:
        parts = m.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "stages" else None

    return sorted(f"{m} imports {t}" for m, ts in g.items() for t in ts
                  if stage(m) and stage(t) and stage(m) != stage(t))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_package_is_in_a_layer():
    for m in modules():
        layer(m)


def test_no_package_imports_one_above_it():
    assert upward(graph()) == []


def test_no_stage_imports_another():
    assert across_stages(graph()) == []


def test_ray_plumbing_knows_nothing_of_the_method():
    g = graph()
    assert sorted(f"{m} imports {t}" for m, ts in g.items() for t in ts
                  if package(m) == "raykit" and package(t) == "method") == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_modules_stay_walkable():
    """At most ~300 lines a module (the house rule), so a newcomer can read one at a time."""
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}


def test_the_checks_fail_on_a_bad_house(tmp_path):
    """The checks above can fail: a storage module that imports a stage, a stage that imports
    another, and a cycle are each found."""
    pkg = tmp_path / "dtl_ray"
    for rel, text in {
        "__init__.py": "",
        "storage/__init__.py": "from dtl_ray.stages import score\n",
        "stages/__init__.py": "",
        "stages/score.py": "def f():\n    from dtl_ray.stages import select\n",
        "stages/select.py": "from dtl_ray.stages.score import f\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    g = graph(pkg)
    assert upward(g) == ["dtl_ray.storage imports dtl_ray.stages.score"]
    assert across_stages(g) == ["dtl_ray.stages.score imports dtl_ray.stages.select",
                                "dtl_ray.stages.select imports dtl_ray.stages.score"]
    assert cycles(g) == [["dtl_ray.stages.score", "dtl_ray.stages.select"]]
    with pytest.raises(AssertionError, match="in no layer"):
        layer("dtl_ray.plugins")
