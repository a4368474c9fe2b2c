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


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configfile", nargs="+", default=[], type=Path,
        help="config files merged over config/config.yaml, as for snakemake (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", type=Path, default=None,
        help="a Snakemake profile (directory or its config.yaml): its `jobs` sets the "
        "concurrency of the wall-time bound",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", action="store_true", help="also list every job with its estimate and request"
    )


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan's table; 1 when a job exceeds the config's cluster limits."""
    from ess.plan import plan_text
    from ess.workflow_config import load_config

    try:
        config = load_config(args.configfile)
    except (ValueError, FileNotFoundError) as error:
        print(f"ess plan: {error}", file=sys.stderr)
        return 2
    text, problems = plan_text(config, args.profile, list_jobs=args.jobs)
    print(text)
    return 1 if problems else 0


SUBCOMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "audit": (
        "re-hash every file in the manifest chain behind results",
        add_audit_arguments,
        run_audit,
    ),
    "plan": (
        "estimate every job's memory, GPU memory, time and disk for a config, and check them "
        "against its cluster limits",
        add_plan_arguments,
        run_plan,
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
