"""The `ess` command line. Each subcommand is an (add_arguments, run) pair in SUBCOMMANDS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, help="result files or their manifests")


def run_audit(args: argparse.Namespace) -> int:
    """Print every file behind each result with OK/MISMATCH/MISSING; 1 if any is not OK."""
    from ess.provenance import check_chain

    first_problem = None
    for result in args.results:
        print(f"# {result}")
        for check in check_chain(result):
            print(
                f"{check.status:<8} {check.path}" + (f"  ({check.detail})" if check.detail else "")
            )
            if not check.ok and first_problem is None:
                first_problem = check
    if first_problem is not None:
        print(f"ess audit: first problem: {first_problem.describe()}", file=sys.stderr)
        return 1
    return 0


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "workdir", nargs="?", type=Path, default=Path("."),
        help="the workflow's working directory, holding results/ (default: here)",
    )  # fmt: skip
    parser.add_argument(
        "--snakefile", type=Path, default=None,
        help="the workflow (default: <workdir>/Snakefile, else ./Snakefile)",
    )  # fmt: skip
    parser.add_argument("--target", default="all", help="the target still to build (default all)")


def run_status(args: argparse.Namespace) -> int:
    """Print the figures and tables present, jobs done and to run, and jobs in progress."""
    from ess.status import status_text

    candidates = (
        [args.snakefile] if args.snakefile else [args.workdir / "Snakefile", Path("Snakefile")]
    )
    snakefile = next((path for path in candidates if path.is_file()), None)
    if args.snakefile and snakefile is None:
        print(f"ess status: no Snakefile at {args.snakefile}", file=sys.stderr)
        return 2
    print(status_text(args.workdir, snakefile, args.target))
    return 0


def add_pin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configfile", type=Path, required=True,
        help="the workflow config to rewrite in place (e.g. config/paper.yaml)",
    )  # fmt: skip


def run_pin(args: argparse.Namespace) -> int:
    """Resolve each hf: branch of the config to its Hub commit and rewrite the file."""
    from ess.fetch import FetchError
    from ess.pin import pin_config

    try:
        pinned = pin_config(args.configfile)
    except (FetchError, OSError) as error:
        print(f"ess pin: {error}", file=sys.stderr)
        return 1
    for name, (old, new) in pinned.items():
        print(f"{name}: {old} -> {new}")
    if pinned:
        print(
            f"pinned {len(pinned)} source(s) in {args.configfile}; allow_unpinned is no longer "
            f"needed for them: delete those lines"
        )
    else:
        print(f"every hf: source in {args.configfile} is already a commit")
    return 0


SUBCOMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "audit": (
        "re-hash every file in the manifest chain behind results",
        add_audit_arguments,
        run_audit,
    ),
    "pin": (
        "rewrite a config's hf: branches to the Hub commits they name now (needs Hub access)",
        add_pin_arguments,
        run_pin,
    ),
    "status": (
        "summarise a workflow directory: figures and tables, jobs done and to run, jobs running",
        add_status_arguments,
        run_status,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ess", description="Effective state-size tools.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
