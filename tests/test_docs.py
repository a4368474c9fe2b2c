"""The method document is in the repository, and what cites it points at sections it has.

The code once cited a brief outside the repository; every tracked file outside docs/ must now
cite docs/method.md instead, as "docs/method.md §2", "docs/method.md §3.2" or
"docs/method.md, E4" (several after one another: "docs/method.md, E1-E5, E7, E8").
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
OUTSIDE_BRIEF = "ESS" + ".md"  # in two pieces, so that this file does not name it
CITATION = re.compile(r"docs/method\.md((?:,?[ \t]*(?:§\d+(?:\.\d+)*|E\d+(?:-E\d+)?\b))+)")
SECTION_CITED = re.compile(r"§(\d+(?:\.\d+)*)")
EXPERIMENT_CITED = re.compile(r"E(\d+)(?:-E(\d+))?")
SECTION_HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)
EXPERIMENT_HEADING = re.compile(r"^### E(\d+)\b", re.MULTILINE)


def tracked_texts() -> dict[str, str]:
    """{path: text} of every tracked UTF-8 file outside docs/ (`git ls-files`)."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout, so no tracked files to read: {error}")
    texts = {}
    for name in listing.decode().split("\0"):
        path = ROOT / name
        if not name or name.startswith("docs/") or not path.is_file():
            continue
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a binary file: it cites nothing
            continue
    return texts


def document_sections(text: str) -> set[str]:
    """The section labels of the method document: "1", "2.3", ..., "E1", "E6"."""
    numbered = set(SECTION_HEADING.findall(text))
    return numbered | {f"E{n}" for n in EXPERIMENT_HEADING.findall(text)}


def cited_sections(text: str) -> list[str]:
    """Every section a text cites in docs/method.md, ranges expanded: "E1-E3" -> E1, E2, E3."""
    cited = []
    for match in CITATION.finditer(text):
        tail = match.group(1)
        cited += SECTION_CITED.findall(tail)
        for first, last in EXPERIMENT_CITED.findall(tail.replace("§", " ")):
            cited += [f"E{n}" for n in range(int(first), int(last or first) + 1)]
    return cited


def missing_citations(texts: dict[str, str], sections: set[str]) -> list[str]:
    """Each "path: docs/method.md <label>" whose label the document does not have."""
    return [
        f"{name}: docs/method.md {'' if label.startswith('E') else '§'}{label}"
        for name, text in texts.items()
        for label in cited_sections(text)
        if label not in sections
    ]


def test_the_method_document_has_its_sections():
    sections = document_sections(METHOD.read_text(encoding="utf-8"))
    assert {"1", "2", "3", "4"} <= sections
    assert {f"E{n}" for n in range(1, 9)} <= sections


def test_no_tracked_file_points_outside_the_repository():
    offenders = [
        f"{name}:{number}: {line.strip()}"
        for name, text in tracked_texts().items()
        for number, line in enumerate(text.splitlines(), 1)
        if OUTSIDE_BRIEF in line
    ]
    assert not offenders, (
        f"cite docs/method.md (§N or E<n>), not {OUTSIDE_BRIEF}, which is not in the "
        "repository:\n" + "\n".join(offenders)
    )


def test_every_citation_names_a_section_of_the_method_document():
    texts = tracked_texts()
    assert any(cited_sections(text) for name, text in texts.items() if name.startswith("src/"))
    sections = document_sections(METHOD.read_text(encoding="utf-8"))
    missing = missing_citations(texts, sections)
    assert not missing, "no such section in docs/method.md:\n" + "\n".join(missing)


def test_the_citation_check_finds_a_missing_section():
    doc = "docs/method" + ".md"  # in pieces: these citations are wrong on purpose
    sections = document_sections("## 1. Operators\n### 1.2 The mixers\n### E4. Regulariser\n")
    assert sections == {"1", "1.2", "E4"}
    text = f"see {doc} §1.2 and {doc} §7, and {doc}, E3-E4, E9."
    assert cited_sections(text) == ["1.2", "7", "E3", "E4", "E9"]
    assert missing_citations({"a.py": text}, sections) == [
        f"a.py: {doc} §7",
        f"a.py: {doc} E3",
        f"a.py: {doc} E9",
    ]


CONFIGFILE_THEN_WORD = re.compile(r"--configfiles? +\S+\.ya?ml +(?![#-])[\w/.-]+")


def test_documented_commands_name_the_target_before_configfile():
    """`--configfile` takes several files: `--configfile config/paper.yaml all` reads `all` as
    a config file (FileNotFoundError), so every command in the docs names its target first."""
    wrong = [
        f"{path}: {match.group(0)}"
        for path, text in tracked_texts().items()
        if path.endswith((".md", ".yaml", ".sh", "Makefile"))
        for match in CONFIGFILE_THEN_WORD.finditer(text)
    ]
    assert not wrong, wrong
