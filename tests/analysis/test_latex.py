"""The report's .tex tables compile with pdflatex (CI installs Debian's texlive; TRH_REQUIRE_LATEX=1 makes a
missing pdflatex a failure instead of a skip)."""

import shutil
import subprocess

import pytest

from analysis.report import build_report
from analysis.tables import tex_text
from tests.tools import required_tool

DOCUMENT = r"""\documentclass{article}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\begin{document}
\input{TABLE}
\end{document}
"""


def test_tex_text_escapes_specials_and_writes_greek_as_math():
    assert tex_text("TRM-Max (paper δ_max 0.05)") == r"TRM-Max (paper $\delta$\_max 0.05)"
    assert tex_text("GRPO ε 0.2/0.28 & 95 % ±") == r"GRPO $\varepsilon$ 0.2/0.28 \& 95 \% $\pm$"
    assert tex_text("a{b}$c#d~e^f\\") == r"a\{b\}\$c\#d\textasciitilde{}e\textasciicircum{}f\textbackslash{}"
    assert tex_text("日") == "?"


def test_every_table_of_the_committed_study_compiles(tmp_path):
    pdflatex = required_tool("pdflatex", env="TRH_REQUIRE_LATEX",
                             install="Debian: texlive-latex-base texlive-latex-recommended")
    out = tmp_path / "report"
    build_report("results/embedded", out, table_formats=("tex",), figure_formats=())
    tables = sorted(out.glob("*.tex"))
    assert any(t.name == "table1.tex" for t in tables)
    assert "δ" not in (out / "table1.tex").read_text() and r"$\delta$" in (out / "table1.tex").read_text()
    for table in tables:
        doc = tmp_path / f"doc_{table.stem}.tex"
        doc.write_text(DOCUMENT.replace("TABLE", str(table)))
        result = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{table.name}: " + result.stdout[-1500:]


def test_paper_style_reproduces_the_papers_marks_on_its_own_numbers():
    """The paper bolds the highest and underlines the second entry of each Table 1 column; on its own
    numbers (analysis/paper.yaml) that is CPPO bold everywhere, and CISPO, CISPO, MinPRO, DPPO underlined;
    CISPO's collapse in the 30B column is not ranked."""
    import pandas as pd

    from analysis.tables import paper, paper_layout, paper_marks

    table = paper()["table1"]
    values = pd.DataFrame(table["rows"], index=table["columns"]).T
    marks = paper_marks(values)
    assert list(marks.index[marks.eq("bold").any(axis=1)]) == ["CPPO"] and marks.loc["CPPO"].eq("bold").all()
    assert {c: marks.index[marks[c] == "underline"][0] for c in values.columns} == {
        "1.7B": "CISPO", "1.7B-Base": "CISPO", "8B-Base": "MinPRO", "30B-A3B-Base": "DPPO"}
    assert marks.loc["CISPO", "30B-A3B-Base"] == ""
    shown = paper_layout(values, "md", digits=2)
    assert shown.loc["CPPO", "1.7B"] == "**31.88**" and shown.loc["DPPO", "30B-A3B-Base"] == "<u>49.23</u>"
    tex = paper_layout(values, "tex", digits=2)
    assert tex.loc["CPPO", "8B-Base"] == r"\textbf{31.11}" and tex.loc["MinPRO", "8B-Base"] == r"\underline{29.72}"


def test_paper_style_table_is_written_beside_the_tested_one_and_compiles(tmp_path):
    out = tmp_path / "report"
    build_report("results/embedded", out, table_formats=("md", "tex"), figure_formats=(), style="paper")
    md = (out / "table1_paper.md").read_text()
    assert "Descriptive" in md and "**" in md and "<u>" in md and (out / "table1.md").exists()
    assert "drift_s with the paper's 30B-A3B-Base" in md
    if shutil.which("pdflatex"):
        doc = tmp_path / "doc.tex"
        doc.write_text(DOCUMENT.replace("TABLE", str(out / "table1_paper.tex")))
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-1500:]
    with pytest.raises(ValueError, match="--style must be one of"):
        build_report("results/embedded", out, style="papers")
