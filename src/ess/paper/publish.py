"""What a notebook publishes: figures (PNG, PDF) and tables (CSV, Markdown, LaTeX).

Every file is written atomically and gets a provenance manifest (`ess.paper.provenance`) naming its
inputs, the settings behind it, the notebook that made it and its caption, so `ess audit` can
walk back from any figure or table to the data.

    shown = formatted(table)                       # numbers as text, NaN as "-"
    interval_text(mean, lo, hi)                    # "0.16 [0.01, 0.30]"
    markdown = markdown_table(shown) + "\\n\\n" + caption + "\\n"
    latex = latex_table(shown, caption, "tab:e1_correlations")
    save_table(table, markdown, latex, [csv, md, tex], inputs, caption, settings, started, nb)
    save_figure(fig, [png, pdf], inputs, caption, settings, started, nb)

A result that decides a claim of the paper passes its `ess.paper.synthetic.verdicts.Verdict`
(`verdict=`): the manifest keeps it as a record (extra.verdict: claim, verdict, evidence), which
`ess.paper.summary` reads into results/summary.md without parsing any caption.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ess.outputs import atomic_output
from ess.paper.provenance import write_manifest

LATEX_SPECIAL = {char: "\\" + char for char in "&%$#_{}"} | {
    "\\": "\\textbackslash{}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
}


def formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """frame with every value as text: floats to 4 significant digits, NaN / None / NA as "-"."""

    def text(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "-" if np.isnan(value) else f"{value:.4g}"
        return "-" if value is None or value is pd.NA else str(value)

    return frame.astype(object).map(text)


def interval_text(mean: float, lo: float, hi: float) -> str:
    """An estimate with its interval as the tables and captions show it: "0.16 [0.01, 0.30]"
    (two decimals; a NaN shows as "nan")."""
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of frame (header row, then one row per record)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.to_numpy()]
    return "\n".join([header, rule, *body])


def latex_escape(text: str) -> str:
    """text with LaTeX's special characters escaped (& % $ # _ { } \\ ~ ^)."""
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def latex_table(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A table environment (tabular with booktabs rules, all columns left-aligned)."""
    lines = [
        "\\begin{table}",
        "\\centering",
        f"\\caption{{{latex_escape(caption)}}}",
        f"\\label{{{label}}}",
        "\\begin{tabular}{" + "l" * len(frame.columns) + "}",
        "\\toprule",
        " & ".join(latex_escape(str(c)) for c in frame.columns) + " \\\\",
        "\\midrule",
        *(" & ".join(latex_escape(str(v)) for v in row) + " \\\\" for row in frame.to_numpy()),
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def line_with_band(ax: Any, rows: pd.DataFrame, x: str, **style: Any) -> None:
    """A summary's mean against column `x` on the matplotlib axes `ax`, with its interval
    [lo, hi] shaded in the line's colour (alpha 0.15). rows: columns x, mean, lo, hi (any
    order: sorted by x here); style: matplotlib line options (color, ls, label, ...)."""
    rows = rows.sort_values(x)
    line = ax.plot(rows[x], rows["mean"], lw=1.0, **style)[0]
    ax.fill_between(rows[x], rows["lo"], rows["hi"], color=line.get_color(), alpha=0.15)


def verdict_record(verdict: Any) -> dict:
    """A verdict (`ess.paper.synthetic.verdicts.Verdict`, or any dataclass with claim, verdict and
    evidence) as the manifest stores it: {"claim": ..., "verdict": ..., "evidence": ...}."""
    record = dataclasses.asdict(verdict)
    return {key: str(record[key]) for key in ("claim", "verdict", "evidence")}


def _manifest(
    path: Path,
    inputs: Sequence,
    caption: str,
    config: dict,
    started: float,
    notebook: str,
    verdict: Any = None,
):
    extra = {"notebook": notebook, "caption": caption}
    if verdict is not None:
        extra["verdict"] = verdict_record(verdict)
    write_manifest(
        path, inputs=[Path(p) for p in inputs], config=config, started=started, extra=extra
    )


def save_table(
    table: pd.DataFrame,
    markdown: str,
    latex: str,
    paths: Sequence[str | Path],
    inputs: Sequence[str | Path],
    caption: str,
    config: dict,
    started: float,
    notebook: str,
    verdict: Any = None,
) -> None:
    """table's numbers to paths[0] (CSV), markdown to paths[1], latex to paths[2], each with a
    manifest. config: the settings behind the numbers; started: the notebook's start time;
    verdict: the `ess.paper.synthetic.verdicts.Verdict` the table decides, if any (kept in the
    manifests)."""
    csv, md, tex = map(Path, paths)
    for path, write in (
        (csv, lambda p: table.to_csv(p, index=False)),
        (md, lambda p: p.write_text(markdown)),
        (tex, lambda p: p.write_text(latex)),
    ):
        with atomic_output(path) as temporary:
            write(temporary)
        _manifest(path, inputs, caption, config, started, notebook, verdict)


def save_figure(
    fig: Any,
    paths: Sequence[str | Path],
    inputs: Sequence[str | Path],
    caption: str,
    config: dict,
    started: float,
    notebook: str,
    verdict: Any = None,
) -> None:
    """The matplotlib figure to each path (format from its suffix, 200 dpi), with a manifest;
    verdict: as for `save_table`."""
    for path in map(Path, paths):
        with atomic_output(path) as temporary:
            fig.savefig(temporary, format=path.suffix[1:], dpi=200, bbox_inches="tight")
        _manifest(path, inputs, caption, config, started, notebook, verdict)
