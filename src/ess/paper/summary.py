"""results/summary.md: what a run found and what it cost, read from the files the workflow
wrote (rule `summary`), never typed. Three parts:

- **Verdicts**: each published figure or table that decides a claim of the paper keeps the
  claim, the verdict and its evidence (the numbers it was decided from) as a record in its
  manifest (`extra.verdict`, written by `ess.paper.publish.save_table` / `save_figure`). One row per
  experiment (E1-E8), named by the result's name (`e1_correlations` -> E1); no caption is
  parsed.
- **The key E6 table** (`results/tables/e6_delimiter_drop.csv`), column by column as the CSV
  has them; every interval (`<x>_mean` or `<x>`, with `<x>_lo` and `<x>_hi`) shows as one
  column `<x>`, "mean [lo, hi]". A column added to the table appears here too.
- **Cost**: every job behind the results, found by walking the manifests from each result
  back through its inputs' manifests (as `ess audit` does). A job is the manifests that share
  its rule (or notebook), wildcards and start time; its time is from that start to its last
  manifest's end. Per rule: jobs, summed job time and the longest job; in all: jobs, summed
  job time and the span from the first start to the last end (the wall time of the run, with
  any pause between sittings).

    text = build_summary(published, "results/tables/e6_delimiter_drop.csv")
    # = summary_markdown(verdict_table(records), e6 table, cost_by_rule(job_table(...)))
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ess.paper.provenance import MANIFEST_SUFFIX, manifest_path
from ess.paper.publish import formatted, interval_text, markdown_table

EXPERIMENT_NAME = re.compile(r"^e(\d+)_")  # results/<kind>/e<n>_<what>.<ext>
VERDICT_COLUMNS = ["experiment", "claim", "verdict", "evidence", "result"]
JOB_COLUMNS = ["rule", "started", "finished", "seconds"]


def experiment_of(path: str | Path) -> str | None:
    """The experiment a result belongs to, from its file name: "E1" for
    results/tables/e1_correlations.csv; None for a result of no experiment (synthetic_runs)."""
    match = EXPERIMENT_NAME.match(Path(path).name)
    return f"E{int(match[1])}" if match else None


def read_manifests(results: Iterable[str | Path]) -> dict[str, dict]:
    """{result: its manifest} of each result (a manifest path counts as its result; results
    without a manifest are left out), in the order given."""
    records = {}
    for result in map(str, results):
        result = result.removesuffix(MANIFEST_SUFFIX)
        path = manifest_path(Path(result))
        if result not in records and path.is_file():
            records[result] = json.loads(path.read_text())
    return records


# ---------------------------------------------------------------------------------------------
# Verdicts


def verdict_table(records: Mapping[str, dict]) -> pd.DataFrame:
    """One row per experiment whose results carry a verdict record (`extra.verdict`), in
    experiment order: experiment, claim, verdict, evidence, result (the first result, in the
    order of `records`, that carries it; a figure and a table of one experiment with the same
    record count once, a different record is one more row)."""
    rows = []
    seen = set()
    for result, manifest in records.items():
        record = (manifest.get("extra") or {}).get("verdict")
        experiment = experiment_of(result)
        if not record or experiment is None:
            continue
        key = (experiment, record["claim"], record["verdict"], record["evidence"])
        if key in seen:
            continue
        seen.add(key)
        rows.append({"experiment": experiment, **record, "result": result})
    table = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    order = table["experiment"].str.removeprefix("E").astype(int)
    return table.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The key E6 table


def _interval_stem(column: str, columns: Iterable[str]) -> str | None:
    """The `<x>` of an interval column: `<x>_mean` or `<x>` itself, with `<x>_lo` and `<x>_hi`
    beside it; None for any other column."""
    stem = column.removesuffix("_mean")
    return stem if {f"{stem}_lo", f"{stem}_hi"} <= set(columns) else None


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """table with each interval, the columns `<x>_mean` (or `<x>`), `<x>_lo` and `<x>_hi`,
    shown as one text column `<x>`, "mean [lo, hi]" (ess.paper.publish.interval_text), where its
    mean stood. Every other column is kept as it is, in its place."""
    stems = {c: _interval_stem(c, table.columns) for c in table.columns}
    bounds = {f"{stem}{end}" for stem in stems.values() if stem for end in ("_lo", "_hi")}
    shown = {}
    for column, stem in stems.items():
        if stem:
            rows = table[[column, f"{stem}_lo", f"{stem}_hi"]].to_numpy(dtype=float)
            shown[stem] = [interval_text(*row) for row in rows]
        elif column not in bounds:
            shown[column] = table[column]
    return pd.DataFrame(shown, index=table.index)


# ---------------------------------------------------------------------------------------------
# Cost


def _job_key(manifest: dict) -> tuple:
    extra = manifest.get("extra") or {}
    rule = extra.get("rule") or ("notebook" if "notebook" in extra else "unknown")
    what = extra.get("notebook") or json.dumps(extra.get("wildcards") or {}, sort_keys=True)
    return rule, what, manifest.get("started")


def chain_manifests(records: Mapping[str, dict]) -> dict[Path, dict]:
    """Every manifest behind the results of `records`: theirs, then, depth first, those of
    their inputs (`inputs[].manifest`, relative to the manifest that names it), each once."""
    found: dict[Path, dict] = {}
    stack = [(manifest_path(Path(result)).resolve(), m) for result, m in records.items()]
    while stack:
        path, manifest = stack.pop()
        if path in found:
            continue
        found[path] = manifest
        for entry in manifest.get("inputs", []):
            if "manifest" not in entry:
                continue
            upstream = (path.parent / entry["manifest"]).resolve()
            if upstream not in found and upstream.is_file():
                stack.append((upstream, json.loads(upstream.read_text())))
    return found


def job_table(manifests: Iterable[dict]) -> pd.DataFrame:
    """One row per job of `manifests` (every manifest of the run, `chain_manifests`): rule
    ("notebook" for a figure or table), started and finished (datetimes, UTC; NaT when the
    manifest has no start) and seconds from its start to its last manifest's end."""
    jobs: dict[tuple, tuple[datetime | None, datetime]] = {}
    for manifest in manifests:
        key = _job_key(manifest)
        started = manifest.get("started")
        first = datetime.fromisoformat(started) if started else None
        last = datetime.fromisoformat(manifest["finished"])
        if key in jobs:
            last = max(last, jobs[key][1])
        jobs[key] = (first, last)
    rows = [
        {
            "rule": rule,
            "started": first,
            "finished": last,
            "seconds": (last - first).total_seconds() if first else np.nan,
        }
        for (rule, _, _), (first, last) in jobs.items()
    ]
    table = pd.DataFrame(rows, columns=JOB_COLUMNS)
    for column in ("started", "finished"):
        table[column] = pd.to_datetime(table[column], utc=True)
    return table


def cost_by_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule (in order of first start): jobs, job seconds summed, longest job's seconds; then
    a row "all": every job, their seconds summed, and as longest the span from the first start
    to the last end (wall seconds)."""
    jobs = jobs.sort_values("started", na_position="last")
    grouped = jobs.groupby("rule", sort=False)["seconds"]
    table = pd.DataFrame(
        {
            "jobs": grouped.size(),
            "job seconds": grouped.sum(min_count=1),
            "longest job seconds": grouped.max(),
        }
    )
    span = (jobs["finished"].max() - jobs["started"].min()).total_seconds() if len(jobs) else 0
    table.loc["all"] = [len(jobs), jobs["seconds"].sum(min_count=1), span]
    table["jobs"] = table["jobs"].astype(int)
    return table.rename_axis("rule").reset_index()


# ---------------------------------------------------------------------------------------------
# The document


def _cell(text: object) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _markdown(frame: pd.DataFrame) -> str:
    return markdown_table(formatted(frame).map(_cell))


def _whole_seconds(cost: pd.DataFrame) -> pd.DataFrame:
    """The cost table with its seconds rounded to whole seconds ("-" where unknown)."""
    columns = [c for c in cost.columns if c.endswith("seconds")]
    return cost.assign(**{c: cost[c].round().astype("Int64") for c in columns})


def _link(result: str, base: str) -> str:
    """A Markdown link to a result, relative to the directory of summary.md."""
    target = os.path.relpath(result, base) if base else result
    return f"[{Path(result).name}]({Path(target).as_posix()})"


def summary_markdown(
    verdicts: pd.DataFrame,
    e6_table: pd.DataFrame | None,
    cost: pd.DataFrame,
    e6_name: str = "",
    base: str = "",
) -> str:
    """results/summary.md from the three tables: `verdict_table`, the key E6 table as its CSV
    holds it (None: no E6 in this run) and `cost_by_rule`. base: the directory summary.md is
    written to, which its links to the results are relative to ("": the working directory)."""
    total = cost[cost["rule"] == "all"].iloc[0] if len(cost) else None
    verdicts = verdicts.assign(result=[_link(r, base) for r in verdicts["result"]])
    lines = [
        "# What this run found",
        "",
        "Generated by rule `summary` (`ess.paper.summary`) from the result tables and manifests of "
        "this run: edit nothing here, rerun `snakemake results/summary.md`.",
        "",
        "## Verdicts on the paper's claims",
        "",
        "Each row is the record its result's manifest keeps (`extra.verdict`): the claim, the "
        "verdict at this scale and the numbers it was decided from. Captions and notebooks "
        "(`results/notebooks/`) say how each verdict is decided.",
        "",
        _markdown(verdicts.rename(columns={"claim": "paper's claim", "verdict": "here"}))
        if len(verdicts)
        else "No result of this run carries a verdict.",
        "",
    ]
    if e6_table is not None:
        lines += [
            f"## E6: the ESS drop at context delimiters ({e6_name})",
            "",
            "Each `<x>` column is mean [CI low, CI high] of the table's `<x>_mean`, `<x>_lo` "
            "and `<x>_hi`; the table's caption (its manifest, `results/tables/"
            f"{e6_name}.md`) states the design behind them.",
            "",
            _markdown(with_intervals(e6_table)),
            "",
        ]
    lines += [
        "## What the run cost",
        "",
        "Jobs behind the results, found through their manifests; job seconds from each job's "
        "start to its last output's manifest. The row `all`: every job, their seconds summed, "
        "and as longest the wall time from the first job's start to the last job's end "
        "(including any pause between sittings).",
        "",
        _markdown(_whole_seconds(cost)) if len(cost) else "No job recorded.",
        "",
    ]
    if total is not None:
        lines += [
            f"In all: {int(total['jobs'])} jobs, {total['job seconds'] / 60:.1f} minutes of job "
            f"time, {total['longest job seconds'] / 60:.1f} minutes of wall time.",
            "",
        ]
    return "\n".join(lines)


def build_summary(
    published: Iterable[str | Path], e6_table: str | Path | None, base: str = "results"
) -> str:
    """results/summary.md's text from the run's published results (figures and tables, or
    their manifests) and the path of the key E6 table's CSV (None: no E6); base: the
    directory of summary.md (its links are relative to it)."""
    records = read_manifests(published)
    jobs = job_table(chain_manifests(records).values())
    table = pd.read_csv(e6_table) if e6_table else None
    name = Path(e6_table).stem if e6_table else ""
    return summary_markdown(verdict_table(records), table, cost_by_rule(jobs), name, base)
