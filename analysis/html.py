"""``report.html``: the whole report as one self-contained page — the index (summary, Table 1, notes,
factorial views, searches), every table file, and every figure embedded (base64 PNG), so it can be
mailed or attached without its folder. Written from the markdown files the report just wrote."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em .5em}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee;margin:.5em 0}details{margin:.4em 0}
summary{cursor:pointer;font-weight:600}nav a{margin-right:1em}code{background:#f5f5f5;padding:0 .2em}"""


def write_html(out: Path, title: str, since: float = 0.0) -> Path:
    """Render ``out``'s report.md, its other .md files and its .png figures into ``out/report.html``: those
    written at or after ``since`` (a file an earlier report left in the folder is not this report's)."""
    import markdown

    def render(text: str) -> str:
        return markdown.markdown(text, extensions=["tables", "fenced_code"])

    index = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    def fresh(paths):
        return sorted(p for p in paths if p.stat().st_mtime >= since - 1)  # (coarse file-system clocks)

    tables = fresh(p for p in out.glob("*.md") if p.name != "report.md")
    figures = fresh(out.glob("*.png"))
    body = [f"<nav><a href='#summary'>summary</a><a href='#tables'>tables ({len(tables)})</a>"
            f"<a href='#figures'>figures ({len(figures)})</a></nav>",
            "<section id='summary'>", render(index), "</section>", "<section id='tables'><h2>Tables</h2>"]
    for path in tables:
        body += [f"<details><summary>{html.escape(path.stem)}</summary>", render(path.read_text()), "</details>"]
    body += ["</section>", "<section id='figures'><h2>Figures</h2>"]
    for path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        body += [f"<h3>{html.escape(path.stem)}</h3>", f"<img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"]
    body.append("</section>")
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    target = out / "report.html"
    target.write_text(page)
    return target
