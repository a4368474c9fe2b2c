"""envs/*.yaml pin the same versions as pyproject.toml, and pin everything they list.

A rule's conda env and the project venv must resolve the same packages, or a result computed
under snakemake differs from the one a test or notebook computes in the venv.
"""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
EXPECTED_ENVS = {"torch", "analysis", "notebooks"}

NAME = r"([A-Za-z0-9][A-Za-z0-9._-]*)"
# pip: name, optional [extras], optional operator and version (markers after ';' are ignored)
PIP_SPEC = re.compile(rf"^\s*{NAME}\s*(?:\[[^\]]*\])?\s*(?:(===?|~=|!=|[<>]=?)\s*([^\s;#,]+))?")
# conda match spec: optional channel::, name, then `=1.2`, `==1.2` or ` 1.2`
CONDA_SPEC = re.compile(rf"^\s*(?:[\w.-]+::)?{NAME}\s*(?:(==|=|\s)\s*([^\s=]+))?")


def normalize(name: str) -> str:
    """PEP 503 name: `PyYAML`, `huggingface_hub` -> `pyyaml`, `huggingface-hub`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins() -> dict[str, str]:
    """Every requirement of pyproject.toml (main and optional), as name -> exact version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    pins = {}
    for req in reqs:
        m = PIP_SPEC.match(req)
        assert m and m.group(2) == "==", f"pyproject.toml: {req!r} is not pinned with =="
        pins[normalize(m.group(1))] = m.group(3)
    return pins


def env_pins(path: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(conda pins, pip pins, unpinned entries) of one conda env file."""
    env = yaml.safe_load(path.read_text())
    conda, pip, unpinned = {}, {}, []
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict):
            for line in dep.get("pip") or []:
                line = str(line).strip()
                if line.startswith("-"):  # pip options (--index-url, -e ...) carry no package pin
                    continue
                m = PIP_SPEC.match(line)
                if m and m.group(2) in ("==", "==="):
                    pip[normalize(m.group(1))] = m.group(3)
                else:
                    unpinned.append(f"pip: {line}")
            continue
        m = CONDA_SPEC.match(str(dep))
        version = m.group(3) if m else None
        if version and not any(c in version for c in "<>*!|,"):
            conda[normalize(m.group(1))] = version
        else:
            unpinned.append(f"conda: {dep}")
    return conda, pip, unpinned


def test_expected_envs_exist():
    assert EXPECTED_ENVS <= {p.stem for p in ENV_FILES}, [p.name for p in ENV_FILES]


def test_pyproject_pins_every_requirement():
    assert pyproject_pins()  # asserts inside: every requirement is `name==version`


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_everything_and_agrees_with_pyproject(path):
    pins = pyproject_pins()
    conda, pip, unpinned = env_pins(path)
    assert not unpinned, f"{path.name} lists packages without an exact version: {unpinned}"
    assert conda or pip, f"{path.name} lists no packages"
    clashes = [
        f"{name}: {source} has {version}, pyproject.toml has {pins[name]}"
        for source, found in (("conda", conda), ("pip", pip))
        for name, version in found.items()
        if name in pins and version != pins[name]
    ]
    assert not clashes, f"{path.name}: " + "; ".join(clashes)


def test_torch_comes_from_pip_pinned():
    conda, pip, _ = env_pins(ROOT / "envs" / "torch.yaml")
    assert "torch" not in conda, "torch must come from pip (the conda build differs)"
    assert pip.get("torch") == pyproject_pins()["torch"]


def test_env_parsing_catches_mismatch_and_unpinned(tmp_path):
    """The checks above would notice a wrong pin, a loose pin and a bare name."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "dependencies:\n  - python=3.11\n  - scipy\n"
        "  - pip:\n      - numpy==1.0.0\n      - pandas>=2\n      - --extra-index-url x\n"
    )
    conda, pip, unpinned = env_pins(bad)
    assert conda == {"python": "3.11"}
    assert pip == {"numpy": "1.0.0"}
    assert unpinned == ["conda: scipy", "pip: pandas>=2"]
    assert pip["numpy"] != pyproject_pins()["numpy"]
