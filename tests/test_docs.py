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


# ---------------------------------------------------------------------------------------------
# The README is a guide: short, its links resolve, its commands exist, and its measured numbers
# live in files the workflow or the benchmarks write (results/summary.md, benchmarks/README.md).

README = ROOT / "README.md"
README_MAX_LINES = 260
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# A measured quantity: a number with a unit of time, size or speed-up ("26.9 minutes", "1,613 s",
# "2.7 GB", "4.1x", "80%").
MEASURED = re.compile(
    r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s*(?:x\b|%|(?:ms|s|sec|seconds?|min|minutes?|h|hours?|"
    r"days?|[kMGT]i?B|GFLOP/s|core-hours|GPU-hours|job-hours)\b)"
)
NUMBER = re.compile(r"(?<![\w.§/-])(\d[\d,]*(?:\.\d+)?)x?(?!\w)")
MAX_PROSE_NUMBERS = 12
NOTE_STAMP = re.compile(r"^Commit: ([0-9a-f]{7,40})\b", re.MULTILINE)


def prose(markdown: str) -> str:
    """The text a reader reads as sentences: without code blocks, inline code, link targets,
    HTML comments and experiment names (E1 ... E8)."""
    text = FENCE.sub("", markdown)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    text = INLINE_CODE.sub("", text)
    text = LINK.sub(lambda match: match.group(0).split("](")[0], text)
    return re.sub(r"\bE\d+(?:-E\d+)?\b", "", text)


def measured_numbers(markdown: str) -> list[str]:
    """The numbers with a unit in the prose of a Markdown text."""
    return [" ".join(match.split()) for match in MEASURED.findall(prose(markdown))]


def prose_numbers(markdown: str) -> list[str]:
    return NUMBER.findall(prose(markdown))


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings ("## The workflow" -> "the-workflow")."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", markdown), re.MULTILINE):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        anchors.add(text.replace(" ", "-"))
    return anchors


def broken_links(path: Path) -> list[str]:
    """Relative links of a Markdown file whose file (or heading anchor) does not exist."""
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        name, _, anchor = target.partition("#")
        linked = (path.parent / name).resolve() if name else path
        if not linked.exists():
            broken.append(f"{path.relative_to(ROOT)}: {target}")
        elif anchor and linked.suffix == ".md":
            if anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    return broken


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_the_readme_types_no_measured_numbers():
    """Measured numbers belong in results/summary.md (generated) and benchmarks/README.md."""
    text = README.read_text(encoding="utf-8")
    assert measured_numbers(text) == []
    numbers = prose_numbers(text)
    assert len(numbers) <= MAX_PROSE_NUMBERS, numbers


def test_the_number_check_finds_typed_measurements():
    text = (
        "It took 26.9 minutes (1,613 s) and 2.7 GB, 4.1x faster; 80% of it in `dsyevd 3 s`.\n"
        "```\n$ ess plan   # 17,277.8 GPU-hours\n```\n"
        "E1 to E8 on Python 3.11, see [notes](docs/notes/2026.md) and docs/method.md §5.\n"
    )
    assert measured_numbers(text) == ["26.9 minutes", "1,613 s", "2.7 GB", "4.1x", "80%"]
    assert prose_numbers(text) == ["26.9", "1,613", "2.7", "4.1", "80", "3.11"]


def documentation() -> list[Path]:
    """The Markdown files a reader follows from the README."""
    files = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [path for path in files if path.is_file()]


def test_relative_links_resolve():
    broken = [link for path in documentation() for link in broken_links(path)]
    assert not broken, "\n".join(broken)


def test_the_link_check_finds_a_broken_link(tmp_path):
    page = ROOT / "docs" / "a-page-that-is-not-there.md"
    text = "[ok](method.md) [anchor](workflow.md#configuration) [gone](notes/nothing.md)\n"
    text += "[no heading](workflow.md#no-such-heading) [web](https://example.org)\n"
    page.write_text(text)
    try:
        assert broken_links(page) == [
            "docs/a-page-that-is-not-there.md: notes/nothing.md",
            "docs/a-page-that-is-not-there.md: workflow.md#no-such-heading (no such heading)",
        ]
    finally:
        page.unlink()


def test_readme_commands_exist():
    """Every `make <target>` of the README is a Makefile target, every `ess <command>` a
    subcommand of the CLI, and every repository path it names in code exists."""
    from ess.paper.cli import SUBCOMMANDS

    text = README.read_text(encoding="utf-8")
    code = " ".join(FENCE.findall(text) + INLINE_CODE.findall(text))
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    made = set(re.findall(r"(?<![\w-])make ([a-z]+)\b", code))
    assert made and made <= targets, made - targets
    commands = set(re.findall(r"(?<!from )(?<![\w./-])ess ([a-z]+)\b", code))
    assert commands and commands <= set(SUBCOMMANDS), commands - set(SUBCOMMANDS)
    roots = "config|docs|tests|workflow|src|benchmarks|profiles|notebooks|envs"
    paths = re.findall(rf"(?<![\w/.])((?:{roots})/[\w./-]*\w)", code)
    missing = sorted({path for path in paths if not (ROOT / path).exists()})
    assert not missing, missing


def test_every_note_names_a_commit_that_exists():
    notes = sorted((ROOT / "docs" / "notes").glob("*.md"))
    assert notes
    for note in notes:
        stamp = NOTE_STAMP.search(note.read_text(encoding="utf-8")[:2000])
        assert stamp, f"{note.name}: no 'Commit: <hash>' line near its top"
        found = subprocess.run(
            ["git", "cat-file", "-e", f"{stamp[1]}^{{commit}}"], cwd=ROOT, capture_output=True
        )
        assert found.returncode == 0, f"{note.name}: commit {stamp[1]} is not in this repository"


def readme_layout() -> str:
    """The README's layout tree: the code block under "## Layout"."""
    section = README.read_text(encoding="utf-8").split("\n## Layout\n", 1)[1]
    return FENCE.findall(section)[0]


def test_the_readme_layout_matches_the_code():
    """Every entry of the tree exists, and every module of src/ess (with ess.paper's) and every
    rules file is named."""
    layout = readme_layout()
    column = layout.splitlines()[1].index("entry point")  # where the descriptions start
    entries = [entry for line in layout.splitlines()[1:-1] for entry in line[:column].split()]
    missing = [entry for entry in entries if not (ROOT / entry.rstrip("/")).exists()]
    assert entries and not missing, missing
    words = set(re.findall(r"\w+", layout))
    modules = {p.stem for p in (ROOT / "src" / "ess").rglob("*.py")} - {"__init__"}
    rules = {p.stem for p in (ROOT / "workflow" / "rules").glob("*.smk")}
    unnamed = sorted((modules | rules) - words)
    assert not unnamed, f"not in the README's layout: {unnamed}"
