"""What the library and the rules import.

`import ess` and the analysis modules do not import torch, so the notebooks run without it
(envs/notebooks.yaml has none; envs/analysis.yaml says why aggregate_e6 still needs it). And
every conda env of envs/ installs what its rules import: the
third-party packages imported at module level by each rule's script (or, for the notebook
rules, by the notebooks) and by the ess modules those import, followed through the library.
"""

import ast
import json
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest
from test_envs import env_pins, normalize

ROOT = Path(__file__).resolve().parents[1]
# what the notebooks and the aggregates import: the analysis and notebooks envs have no torch
ANALYSIS_MODULES = [
    "ess",
    "ess.paper.e6.modulation",
    "ess.paper.stats",
    "ess.paper.publish",
    "ess.paper.e6.delimiters",
    "ess.paper.e6.boundaries",
    "ess.paper.e6.report",
    "ess.paper.synthetic.grid",
    "ess.paper.synthetic.tables",
    "ess.paper.synthetic.verdicts",
    "ess.paper.synthetic.captions",
    "ess.paper.synthetic.experiments",  # and through it e1 ... e8
    "ess.paper.training.registry",
    "ess.paper.training.model_config",
    "ess.paper.results",
    "ess.paper.summary",
    "ess.outputs",
]


def test_analysis_modules_do_not_import_torch():
    code = (
        f"import {', '.join(ANALYSIS_MODULES)}; import sys; "
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
        "assert not loaded, loaded"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_the_metric_is_still_importable_from_ess():
    from ess import EssResult, effective_state_size
    from ess.metric import EssResult as from_metric

    assert EssResult is from_metric and callable(effective_state_size)
    assert "effective_state_size_ssm" in dir(__import__("ess"))


# ---------------------------------------------------------------------------------------------
# Each conda env against its rules' imports


def module_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported at the top level of a module (not inside functions: those are lazy by
    design); `from ess import modulation` counts as ess.paper.e6.modulation."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def local_source(name: str) -> Path | None:
    """The file of a module of this repository (ess.* under src/, or a helper of
    workflow/scripts/), or None for any other module."""
    parts = name.split(".")
    base = ROOT / "src" if parts[0] == "ess" else ROOT / "workflow" / "scripts"
    path = base.joinpath(*parts)
    return next((p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()), None)


def third_party_imports(trees: list[ast.Module]) -> set[str]:
    """Top-level names of the third-party modules the code imports, through local modules."""
    todo = [name for tree in trees for name in module_level_imports(tree)]
    seen, third = set(), set()
    while todo:
        name = todo.pop()
        top = name.split(".")[0]
        if local_source(top) is not None:  # this repository's: follow it (a name in it: skip)
            source = local_source(name)
            if source is not None and source not in seen:
                seen.add(source)
                todo += module_level_imports(ast.parse(source.read_text()))
        elif top not in sys.stdlib_module_names:
            third.add(top)
    return third


def rule_sources() -> dict[str, list[ast.Module]]:
    """{env name: the parsed code its rules run}: each script rule's script, and every
    notebook for the rules that run notebooks with papermill."""
    text = "\n".join(path.read_text() for path in (ROOT / "workflow" / "rules").glob("*.smk"))
    sources: dict[str, list[ast.Module]] = {}
    for block in re.split(r"^rule ", text, flags=re.MULTILINE)[1:]:
        env = re.search(r"envs/(\w+)\.yaml", block)[1]
        script = re.search(r'script:\s*"\.\./scripts/([\w.]+)"', block)
        if script:
            trees = [ast.parse((ROOT / "workflow" / "scripts" / script[1]).read_text())]
        else:
            assert "papermill" in block, block.split(":", 1)[0]
            trees = []
            for path in (ROOT / "notebooks").glob("*.ipynb"):
                cells = json.loads(path.read_text())["cells"]
                code = [c["source"] for c in cells if c["cell_type"] == "code"]
                trees.append(ast.parse("\n".join("".join(lines) for lines in code)))
        sources.setdefault(env, []).extend(trees)
    return sources


def installed_with(distributions: set[str]) -> set[str]:
    """The distributions and everything they require, recursively, as installed here."""
    found, todo = set(), list(distributions)
    while todo:
        name = normalize(todo.pop())
        if name in found:
            continue
        found.add(name)
        try:
            requirements = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9._-]+", r)[0] for r in requirements if "extra ==" not in r]
    return found


@pytest.mark.parametrize("env", sorted(rule_sources()))
def test_each_conda_env_installs_what_its_rules_import(env):
    conda, pip, _ = env_pins(ROOT / "envs" / f"{env}.yaml")
    installed = installed_with(set(conda) | set(pip))
    distributions = packages_distributions()
    missing = {
        name: distributions.get(name, ["not installed here"])
        for name in sorted(third_party_imports(rule_sources()[env]))
        if not {normalize(d) for d in distributions.get(name, [])} & installed
    }
    assert not missing, f"envs/{env}.yaml lacks what its rules import: {missing}"


# ---------------------------------------------------------------------------------------------
# The two rooms: `ess` (the measurement) never imports `ess.paper` (the reproduction)


def ess_module_name(path: Path) -> str:
    """ess.x.y of src/ess/x/y.py (a package's __init__.py: the package)."""
    parts = path.relative_to(ROOT / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ess_imports(path: Path) -> set[str]:
    """Every ess module `path` imports, at module level or inside a function, resolved to a
    module of src/ (`from ess.paper import cost` -> ess.paper.cost; a name in a module -> it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    modules = set()
    for name in names:
        while name.startswith("ess") and local_source(name) is None:
            name = name.rpartition(".")[0]
        if name.startswith("ess") and name != ess_module_name(path):
            modules.add(name)
    return modules


def import_graph() -> dict[str, set[str]]:
    """{ess module: the ess modules it imports} over every file of src/ess; packages' own
    __init__ imports (`import ess.paper.x` names ess and ess.paper too) are left out."""
    packages = {ess_module_name(p) for p in (ROOT / "src" / "ess").rglob("__init__.py")}
    graph = {}
    for path in sorted((ROOT / "src" / "ess").rglob("*.py")):
        graph[ess_module_name(path)] = ess_imports(path) - packages
    return graph


def test_the_core_imports_nothing_of_ess_paper():
    graph = import_graph()
    core = [name for name in graph if not name.startswith("ess.paper")]
    assert {"ess.metric", "ess.dense_path", "ess.hf", "ess.measure", "ess.trace"} <= set(core)
    arrows = {name: sorted(m for m in graph[name] if m.startswith("ess.paper")) for name in core}
    assert not any(arrows.values()), {name: to for name, to in arrows.items() if to}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk of `graph` (each reported once per back edge)."""
    found, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_module_of_ess_imports_itself_through_others():
    assert not cycles(import_graph())


def test_the_graph_checks_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert not cycles({"a": {"b"}, "b": {"c"}, "c": set()})
    assert ess_imports(ROOT / "src" / "ess" / "paper" / "plan.py") >= {"ess.paper.cost"}
