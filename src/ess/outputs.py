"""What the measurement writes and how: results written atomically and hashed, and the names of
the tolerance-ESS columns of its tables (`ess trace` here, E6's tables in ess.paper).

Torch-free, so that the modules that only read tables import it without torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TAU_PREFIX = "ess_tau_"  # tolerance-ESS at one tau: ess_tau_1e-03


def tau_column(tau: float) -> str:
    """The ESS table's column of tolerance-ESS at `tau`: 1e-3 -> "ess_tau_1e-03"."""
    return f"{TAU_PREFIX}{tau:.0e}"


def tau_of(column: str) -> float:
    """The tau of a `tau_column` name."""
    return float(column.removeprefix(TAU_PREFIX))


# Files left out of directory hashes: Snakemake touches this empty file inside every
# directory() output after the job (an mtime carrier), i.e. after the manifest is written.
TREE_HASH_IGNORED = frozenset({".snakemake_timestamp"})
_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """sha256 of a directory: over lines `<relative posix path>\\0<file sha256>\\n`, sorted.

    Symlinked files are hashed by content; empty directories and TREE_HASH_IGNORED do not count.
    """
    root = Path(root)
    lines = []
    for directory, _, names in os.walk(root):
        for name in set(names) - TREE_HASH_IGNORED:
            file = Path(directory, name)
            lines.append(f"{file.relative_to(root).as_posix()}\0{sha256_file(file)}\n")
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """`sha256_tree` for a directory, `sha256_file` for anything else."""
    path = Path(path)
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; move it onto `path` only if the block succeeds.

    The temporary path lies in a hidden scratch directory in `path`'s directory (same filesystem,
    so the final os.replace is atomic); the scratch directory is always removed.
    The block creates the temporary path itself, as a file or a directory. If the block raises,
    the temporary path is removed and `path` is left as it was. A directory replacing an existing
    directory is swapped in through a rename, so `path` is briefly absent but never partial.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    temporary = scratch / path.name
    try:
        yield temporary
        if not (temporary.exists() or temporary.is_symlink()):
            raise FileNotFoundError(
                f"atomic_output({path}): the block finished without creating {temporary}"
            )
        if temporary.is_dir() and path.is_dir() and not path.is_symlink():
            previous = scratch / f"{path.name}.previous"
            os.replace(path, previous)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
