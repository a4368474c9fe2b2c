"""Figure and table files of the notebooks: text formats, and files with manifests that audit."""

import json
import time

import matplotlib
import numpy as np
import pandas as pd

from ess.paper.provenance import audit, manifest_path
from ess.paper.publish import (
    formatted,
    interval_text,
    latex_escape,
    latex_table,
    line_with_band,
    markdown_table,
    save_figure,
    save_table,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def small_table():
    return pd.DataFrame(
        {"mixer": ["GLA", "S6"], "ESS/kv": [1.234567, np.nan], "runs": [14, 3], "note": [None, "x"]}
    )


def test_formatted_gives_four_significant_digits_and_dashes_for_missing():
    shown = formatted(small_table())
    assert shown.to_numpy().tolist() == [["GLA", "1.235", "14", "-"], ["S6", "-", "3", "x"]]


def test_interval_text_gives_two_decimals():
    assert interval_text(0.155, 0.0149, 0.3) == "0.15 [0.01, 0.30]"
    assert interval_text(-0.004, -0.17, 0.09) == "-0.00 [-0.17, 0.09]"
    assert interval_text(np.nan, np.nan, np.nan) == "nan [nan, nan]"


def test_line_with_band_shades_the_interval_in_the_line_colour():
    fig, ax = plt.subplots()
    rows = pd.DataFrame(
        {"offset": [2, 0, 1], "mean": [3.0, 1.0, 2.0], "lo": [2.5, 0.5, 1.5], "hi": [3.5, 1.5, 2.5]}
    )
    line_with_band(ax, rows, "offset", color="C3")
    (line,) = ax.get_lines()
    assert line.get_xdata().tolist() == [0, 1, 2] and line.get_color() == "C3"  # sorted by x
    assert line.get_ydata().tolist() == [1.0, 2.0, 3.0]
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices
    assert vertices[:, 1].min() == 0.5 and vertices[:, 1].max() == 3.5
    assert np.allclose(band.get_facecolor()[0][:3], matplotlib.colors.to_rgb("C3"))
    assert band.get_alpha() == 0.15
    plt.close(fig)


def test_markdown_table():
    assert markdown_table(formatted(small_table())) == (
        "| mixer | ESS/kv | runs | note |\n"
        "|---|---|---|---|\n"
        "| GLA | 1.235 | 14 | - |\n"
        "| S6 | - | 3 | x |"
    )


def test_latex_escape_covers_every_special_character():
    assert latex_escape("a_b & 5% $x$ #1 {y} \\ ~ ^") == (
        "a\\_b \\& 5\\% \\$x\\$ \\#1 \\{y\\} \\textbackslash{} \\textasciitilde{} "
        "\\textasciicircum{}"
    )


def test_latex_table_escapes_caption_header_and_cells():
    frame = pd.DataFrame({"ESS_tol": ["50%"], "kv": ["a&b"]})
    latex = latex_table(frame, "E1: r_s with 95% CI", "tab:e1")
    assert latex.splitlines() == [
        "\\begin{table}",
        "\\centering",
        "\\caption{E1: r\\_s with 95\\% CI}",
        "\\label{tab:e1}",
        "\\begin{tabular}{ll}",
        "\\toprule",
        "ESS\\_tol & kv \\\\",
        "\\midrule",
        "50\\% & a\\&b \\\\",
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
    ]


def test_saved_table_and_figure_carry_manifests_that_audit_clean(tmp_path):
    source = tmp_path / "runs.csv"
    source.write_text("a,b\n1,2\n")
    notebook = str(tmp_path / "e1.ipynb")
    (tmp_path / "e1.ipynb").write_text("{}")
    settings, started = {"stats": {"n_boot": 10}}, time.time()
    table = small_table()
    paths = [tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex"]
    markdown = markdown_table(formatted(table)) + "\n\ncaption\n"
    latex = latex_table(formatted(table), "caption", "tab:t")
    save_table(
        table, markdown, latex, paths, [source, notebook], "caption", settings, started, notebook
    )

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    figures = [tmp_path / "f.png", tmp_path / "f.pdf"]
    save_figure(fig, figures, [source, notebook], "a figure", settings, started, notebook)

    assert pd.read_csv(paths[0])["ESS/kv"].iloc[0] == 1.234567  # the CSV keeps full precision
    assert paths[1].read_text() == markdown and paths[2].read_text() == latex
    assert figures[0].read_bytes().startswith(b"\x89PNG")
    assert figures[1].read_bytes().startswith(b"%PDF")
    for path in paths + figures:
        manifest = json.loads(manifest_path(path).read_text())
        assert manifest["extra"]["notebook"] == notebook
        assert manifest["config"] == settings
        assert audit(path) == []
    source.write_text("a,b\n1,3\n")
    assert any("runs.csv" in problem for problem in audit(paths[0]))
