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
    "ess.modulation",
    "ess.stats",
    "ess.publish",
    "ess.delimiters",
    "ess.boundaries",
    "ess.e6",
    "ess.experiments",
    "ess.synthetic",
    "ess.verdicts",
    "ess.captions",
    "ess.summary",
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
    design); `from ess import modulation` counts as ess.modulation."""
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
