"""The `ess` command line. Each subcommand is an (add_arguments, run) pair in SUBCOMMANDS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

DEFAULT_UNITS = 16  # ess.trace.DEFAULT_UNITS, here so that --help imports no torch
DEFAULT_SPLITS = 64  # ess.trace.DEFAULT_SPLITS


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, help="result files or their manifests")


def run_audit(args: argparse.Namespace) -> int:
    """Print every file behind each result with OK/MISMATCH/MISSING; 1 if any is not OK."""
    from ess.paper.provenance import check_chain

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
    from ess.paper.status import status_text

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
        "--config", nargs="+", default=[], metavar="KEY=VALUE",
        help="overrides merged over the config files, as snakemake's --config reads them "
        """(e.g. 'synthetic={"train":{"steps":100}}'; typed by the config schema)""",
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
    from ess.paper.config_checks import load_config, parse_overrides
    from ess.paper.plan import plan_text

    try:
        config = load_config(args.configfile, overrides=parse_overrides(args.config))
    except (ValueError, FileNotFoundError) as error:
        print(f"ess plan: {error}", file=sys.stderr)
        return 2
    text, problems = plan_text(config, args.profile, list_jobs=args.jobs)
    print(text)
    return 1 if problems else 0


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="a transformers directory, a .gguf file, or hf:<repo>@<revision>"
    )
    parser.add_argument("--text", type=Path, required=True, help="a UTF-8 text file to read")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens read (default 256)")
    parser.add_argument("--layers", help='layers: "all" (default), "0,5", "2-7" or "::3"')
    parser.add_argument(
        "--heads", "--channels", dest="heads",
        help=f'heads/channels of each mixer (default: all, or {DEFAULT_UNITS} evenly spread)',
    )  # fmt: skip
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--positions", help='split positions, e.g. "8,64,200" or "1-50"')
    split.add_argument("--stride", type=int, help=f"every n-th split (default: ~{DEFAULT_SPLITS})")
    parser.add_argument(
        "--tau", type=float, action="append", dest="taus",
        help="tolerance (repeat for several; default 1e-3); the first sets utilisation",
    )  # fmt: skip
    parser.add_argument(
        "--absolute", action="store_true", help="tau is absolute, not relative to sigma_1"
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--out", type=Path, default=Path("trace.parquet"), help="the table")
    parser.add_argument("--plot", type=Path, help="also draw the PNG here")
    parser.add_argument("--save-operators", type=Path, help="keep the captured operators here")
    parser.add_argument(
        "--no-verify", action="store_true", help="keep going when T u misses a mixer's output"
    )
    parser.add_argument(
        "--verify-tol", type=float,
        help="largest relative error of T u allowed (default 1e-3, 3e-2 below float32)",
    )  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, default=Path("~/.cache/ess").expanduser(),
        help="where fetched and converted models are kept (default ~/.cache/ess)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _trace_settings(args: argparse.Namespace) -> dict:
    """The settings the table depends on, checked before any work starts."""
    taus = args.taus or [1e-3]
    bad = [tau for tau in taus if not 0 < tau < 1]
    if bad:
        raise ValueError(f"bad --tau {bad}: each tau must lie in (0, 1)")
    if args.max_tokens < 2:
        raise ValueError(f"bad --max-tokens {args.max_tokens}: ESS needs at least 2 tokens")
    if not args.text.is_file():
        raise ValueError(f"bad --text {args.text}: no such file")
    if args.out.suffix != ".parquet":
        raise ValueError(f"bad --out {args.out}: the table is a .parquet file")
    if args.plot is not None and args.plot.suffix != ".png":
        raise ValueError(f"bad --plot {args.plot}: the picture is a .png file")
    import torch

    from ess.hf import verify_tolerance

    tolerance = args.verify_tol or verify_tolerance(getattr(torch, args.dtype))
    return {
        "max_tokens": args.max_tokens,
        "layers": args.layers,
        "heads": args.heads,
        "positions": args.positions,
        "stride": args.stride,
        "taus": taus,
        "relative": not args.absolute,
        "dtype": args.dtype,
        "device": args.device,
        "verify": None if args.no_verify else tolerance,
    }


def run_trace(args: argparse.Namespace) -> int:
    """Capture every mixer of MODEL on the text, write its ESS table (and plot); 2: a layer has
    no capture route (or bad input), 3: a capture failed its self-check."""
    import torch

    from ess import hf, trace
    from ess.layers import save_operators
    from ess.outputs import atomic_output, sha256_file
    from ess.paper.e6.fetch import FetchError, load_causal_lm, resolve_model

    try:
        settings = _trace_settings(args)
        model_dir, hashed = resolve_model(args.model, args.cache)
        model, tokenizer = load_causal_lm(model_dir, getattr(torch, args.dtype))
        model = model.to(args.device)
        text = args.text.read_text(encoding="utf-8")
        token_ids = tokenizer(text)["input_ids"][: args.max_tokens]
        positions = trace.split_positions(len(token_ids), args.positions, args.stride)
        n_layers = len(hf.decoder_layers(model)) if hf.model_type(model) else model.config.n_layers
        layers = trace.parse_indices(args.layers, n_layers, "--layers")
        ops = hf.capture_operators(model, torch.tensor(token_ids), verify=settings["verify"])
    except (hf.NoCaptureRoute, hf.CompositeMixer, FetchError, ValueError) as error:
        print(f"ess trace: {error}", file=sys.stderr)
        return 2
    except hf.SelfCheckError as error:
        print(f"ess trace: {error} (--no-verify to keep going)", file=sys.stderr)
        return 3

    def units(op):
        count = trace.unit_count(op)
        if args.heads is None:
            return trace.spread(count, trace.DEFAULT_UNITS)
        return trace.parse_indices(args.heads, count, "--heads")

    try:
        table = trace.trace_table(
            ops,
            layers,
            units,
            positions,
            token_ids,
            tokenizer.convert_ids_to_tokens(token_ids),
            settings["taus"],
            settings["relative"],
            args.device,
            progress=not args.quiet,
        )
    except ValueError as error:
        print(f"ess trace: {error}", file=sys.stderr)
        return 2
    metadata = {
        "versions": trace.versions(),
        "model": {
            "source": args.model,
            "name": Path(args.model.removeprefix("hf:")).name,
            "model_type": hf.model_type(model) or "ess",
            "sha256": trace.model_digest(hashed),
        },
        "text": {
            "path": str(args.text),
            "sha256": sha256_file(args.text),
            "n_tokens": len(token_ids),
        },
        "settings": settings,
        "mixers": trace.mixer_checks(ops),
    }
    trace.write_trace(table, metadata, args.out)
    print(f"{args.out}: {len(table)} rows, {len(ops)} mixers, {len(token_ids)} tokens")
    if args.plot is not None:
        trace.plot_trace(table, metadata, args.plot)
        print(f"{args.plot}: the figure")
    if args.save_operators is not None:
        with atomic_output(args.save_operators) as temporary:
            save_operators(ops, temporary)
        print(f"{args.save_operators}: {len(ops)} operators")
    return 0


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", type=Path, help="a table `ess trace` wrote")
    parser.add_argument("--out", type=Path, help="the PNG (default: the table's name, .png)")


def run_plot(args: argparse.Namespace) -> int:
    """Redraw the figure of an `ess trace` table from the table alone."""
    from ess.trace import plot_trace, read_trace

    try:
        table, metadata = read_trace(args.trace)
    except (OSError, ValueError) as error:
        print(f"ess plot: {error}", file=sys.stderr)
        return 2
    out = args.out or args.trace.with_suffix(".png")
    plot_trace(table, metadata, out)
    print(f"{out}: the figure")
    return 0


def add_families_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="a markdown table")


def run_families(args: argparse.Namespace) -> int:
    """Print each causal-LM model type of the installed transformers with its capture route."""
    from ess.hf import family_routes

    rows = family_routes()
    if args.markdown:
        print("| model_type | capture route | tested |\n|---|---|---|")
        for row in rows:
            print(f"| {row['model_type']} | {row['route']} | {'yes' if row['tested'] else ''} |")
        return 0
    for row in rows:
        print(f"{row['model_type']:<28} {'tested' if row['tested'] else '':<7} {row['route']}")
    return 0


def add_pin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configfile", type=Path, required=True,
        help="the workflow config to rewrite in place (e.g. config/paper.yaml)",
    )  # fmt: skip


def run_pin(args: argparse.Namespace) -> int:
    """Resolve each hf: branch of the config to its Hub commit and rewrite the file."""
    from ess.paper.e6.fetch import FetchError
    from ess.paper.e6.pin import pin_config

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
    "trace": (
        "ESS of every layer of a causal LM along your text: a parquet table (and a PNG)",
        add_trace_arguments,
        run_trace,
    ),
    "plot": ("redraw the figure of an `ess trace` table", add_plot_arguments, run_plot),
    "families": (
        "each transformers causal-LM model type with its capture route",
        add_families_arguments,
        run_families,
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
