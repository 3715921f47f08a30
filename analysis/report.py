"""``report/index.html``: every figure and table of the study in one self-contained page.

Why self-contained: the report is mailed, copied off clusters and opened straight from disk. Images are
embedded as base64 ``data:`` URIs, so the page needs nothing next to it; the PNG and the CSV behind each
figure (and the CSV of each table) are also written under ``report/figures`` and ``report/tables`` for
people who want the files, and linked relatively.

The report builds from any root: empty, partial or complete. A section whose data does not exist yet
says so in a sentence that names the missing files and the stage that writes them; a section whose query
fails (say, a corrupt file) shows the error and the rest of the report still builds.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from analysis.claims import CSS as CLAIMS_CSS
from analysis.claims import render_claims
from analysis.which_teacher import which_teacher_html
from analysis.db import ResultsDB
from analysis.figures import FIGURES, Rendered, render_figure
from analysis.sql_cli import table_to_csv_bytes
from analysis.tables import TABLES, RenderedTable, render_table, table_html
from zoo_study.store import ResultsLayout, temp_name, write_bytes_atomic, write_text_atomic

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta, .src { color: #666; font-size: 0.9em; }
.how { background: #f6f8fa; border-left: 3px solid #8ab; padding: 0.5em 0.8em; }
.missing { background: #fff8e1; border-left: 3px solid #e0a800; padding: 0.5em 0.8em; }
.error { background: #fdecea; border-left: 3px solid #d9534f; padding: 0.5em 0.8em; white-space: pre-wrap; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 0.25em 0.6em; }
table.data th { background: #f0f0f0; text-align: left; }
table.data td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
nav ul { columns: 2; font-size: 0.9em; }
""" + CLAIMS_CSS

STAGE_ORDER = "zoo → predict → score → transfer → multi-teacher"


def _esc(text: object) -> str:
    return html.escape(str(text))


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _section_html(r: Rendered, body: str, data_link: str | None) -> str:
    spec = r.spec
    parts = [f'<section id="{_esc(spec.key)}">', f"<h2>{_esc(spec.title)}</h2>"]
    parts.append(f'<p class="how"><b>How to read it.</b> {_esc(spec.how_to_read)}</p>')
    if r.error:
        parts.append(f'<p class="error">{_esc(r.error)}</p>')
    elif r.message:
        parts.append(f'<p class="missing">{_esc(r.message)}</p>')
    else:
        parts.append(body)
    src = f"query: <code>analysis/queries/{_esc(spec.query)}.sql</code>"
    if data_link:
        src = f'data: <a href="{_esc(data_link)}">{_esc(data_link)}</a> · ' + src
    parts.append(f'<p class="src">{src}</p></section>')
    return "\n".join(parts)


def _figure_body(r: Rendered) -> str:
    assert r.png is not None
    return (
        f'<figure><img src="{_png_data_uri(r.png)}" alt="{_esc(r.spec.title)}" '
        f'data-figure="{_esc(r.spec.key)}"></figure>'
    )


class ReportError(RuntimeError):
    """The report could not be written (full disk, permissions); one line, and the previous report is kept."""


@contextlib.contextmanager
def _staged(report_dir: Path) -> Iterator[Path]:
    """A new, empty temp folder beside ``report_dir`` that replaces it when the block ends without error.

    Why a whole folder: figures and tables come and go with the data, and a build that stops half-way (a
    full disk) must leave the previous report as it was, not an old ``index.html`` beside new figures.
    The swap is two renames (old aside, new in place), then the old folder is removed; a ``report`` that
    is a symlink is replaced as a link, never written through. The temp names follow the store's scheme
    (``.report.zs-<pid>-<random>.tmpdir``), so the start-up clean-up of a later run can remove the folder
    of a killed build.
    """
    prefix, suffix = temp_name(report_dir.name, ".tmpdir")
    stage = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=report_dir.parent))
    try:
        os.chmod(stage, 0o755)  # mkdtemp makes 0700; a report is meant to be shared
        yield stage
        aside = None
        if report_dir.is_symlink() or report_dir.exists():
            aside = report_dir.with_name(f"{temp_name(report_dir.name + '-old', suffix)[0]}{uuid.uuid4().hex[:8]}{suffix}")
            os.rename(report_dir, aside)
        try:
            os.rename(stage, report_dir)
        except BaseException:
            if aside is not None:
                os.rename(aside, report_dir)
            raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if aside is not None:
        if aside.is_symlink():
            aside.unlink()
        else:
            shutil.rmtree(aside, ignore_errors=True)


def build_report(root: str | os.PathLike[str]) -> Path:
    """Build ``<root>/report/index.html`` (plus figure PNG/CSV and table CSV files); returns its path.

    The whole folder is built anew beside the old one and renamed into place (:func:`_staged`): a reader
    sees the old report or the new one, never a mix. A write that fails (full disk) raises
    :class:`ReportError` with one line and leaves the old report as it was.
    """
    with ResultsDB(root) as db:
        final = ResultsLayout(db.root).report_dir
        try:
            with _staged(final) as report_dir:
                _build_into(db, report_dir)
        except OSError as exc:
            raise ReportError(f"cannot write the report in {final}: {exc.strerror or exc}; "
                              "the previous report (if any) is kept") from exc
        return final / "index.html"


def _build_into(db: ResultsDB, report_dir: Path) -> None:
    """Write every figure, table and ``index.html`` of the report into the (new, empty) ``report_dir``."""
    fig_dir, tab_dir = report_dir / "figures", report_dir / "tables"
    counts = db.counts()
    overview_html, failures_html = _overview(db)
    claims_html = _claims_section(db, tab_dir)
    sections: list[str] = []
    toc: list[tuple[str, str, str]] = [("claims", "Claims", ""), ("overview", "Overview", "")]
    for spec in FIGURES:
        r = render_figure(db, spec, counts)
        link = None
        if r.png is not None:
            write_bytes_atomic(r.png, fig_dir / f"{spec.key}.png")
            write_bytes_atomic(table_to_csv_bytes(r.table), fig_dir / f"{spec.key}.csv")
            link = f"figures/{spec.key}.csv"
        sections.append(_section_html(r, _figure_body(r) if r.png is not None else "", link))
        toc.append((spec.key, spec.title, _status(r)))
    for tspec in TABLES:
        tr: RenderedTable = render_table(db, tspec, counts)
        link = None
        if tr.html is not None:
            write_bytes_atomic(table_to_csv_bytes(tr.table), tab_dir / f"{tspec.key}.csv")
            link = f"tables/{tspec.key}.csv"
        sections.append(_section_html(tr, tr.html or "", link))
        toc.append((tspec.key, tspec.title, _status(tr)))
    sections.append(_which_teacher_section(db))
    toc.append(("which_teacher", "Which teacher?", ""))
    page = _page(db.root, claims_html, overview_html, failures_html, toc, sections)
    write_text_atomic(page, report_dir / "index.html")


def _which_teacher_section(db: ResultsDB) -> str:
    """'Which teacher?' (analysis/which_teacher.py): never lets a failure there stop the page."""
    try:
        body = which_teacher_html(db)
    except Exception as exc:
        body = f'<p class="error">{_esc(f"which teacher failed: {type(exc).__name__}: {exc}")}</p>'
    return (f'<section id="which_teacher">\n<h2>Which teacher? Transfer predicted from the pair scores</h2>\n{body}\n'
            '<p class="src">zoo-study recommend RESULTS --student ID ranks one student\'s teachers the same way '
            "(analysis/recommend.py)</p></section>")


def _status(r: Rendered) -> str:
    if r.error:
        return "error"
    if r.message:
        return "no data yet"
    return ""


def _claims_section(db: ResultsDB, tab_dir: Path) -> str:
    """The Claims section that opens the report (its rows also go to ``tables/claims.csv``)."""
    try:
        claims, body = render_claims(db)
        csv_path = tab_dir / "claims.csv"
        write_bytes_atomic(table_to_csv_bytes(claims.table), csv_path)
        src = ('<p class="src">data: <a href="tables/claims.csv">tables/claims.csv</a> · queries: '
               "<code>analysis/queries/claim_*.sql</code>, <code>analysis/queries/study_size.sql</code></p>")
    except OSError:
        raise  # a write failed (full disk): the build stops and the old report is kept
    except Exception as exc:  # never let the claims stop the page
        body, src = f'<p class="error">{_esc(f"claims failed: {type(exc).__name__}: {exc}")}</p>', ""
    return (
        '<section id="claims">\n<h2>Claims: the paper\'s findings against this study\'s 95% intervals</h2>\n'
        f"{body}\n{src}\n</section>"
    )


def _overview(db: ResultsDB) -> tuple[str, str]:
    """The counts table and the list of failed jobs (each guarded: a broken file must not stop the page)."""
    try:
        ov = db.named("overview")
        overview = table_html(
            ["results", "count", "files"], [[r["item"], str(r["n"]), r["source"]] for r in ov.to_pylist()]
        )
    except Exception as exc:
        overview = f'<p class="error">{_esc(f"overview query failed: {exc}")}</p>'
    if db.skipped:
        listed = "".join(
            f"<li><code>{_esc(f.relative_to(db.root))}</code> ({_esc(view)}: {_esc(db.skip_reasons.get(f, '?'))})</li>"
            for view, files in db.skipped.items()
            for f in files
        )
        overview += (
            '<p class="error">Files left out of every figure and table: unreadable ones (not valid Parquet; the '
            "pipeline treats them as not done and re-runs their jobs) and symlinks that lead outside the "
            f"results root (the report reads only the root):</p><ul>{listed}</ul>"
        )
    try:
        fl = db.named("failures")
        if fl.num_rows == 0:
            failures = "<p>No failed jobs.</p>"
        else:
            shown = fl.slice(0, 50).to_pylist()
            failures = table_html(
                ["job", "stage", "error", "attempts", "failed at"],
                [[r["job_id"], r["stage"], r["error"], str(r["attempts"]), str(r["failed_at"])] for r in shown],
            )
            if fl.num_rows > len(shown):
                failures += f"<p>… and {fl.num_rows - len(shown)} more (query: failures).</p>"
    except Exception as exc:
        failures = f'<p class="error">{_esc(f"failures query failed: {exc}")}</p>'
    return overview, failures


def _page(root: Path, claims: str, overview: str, failures: str, toc: list[tuple[str, str, str]],
          sections: list[str]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    items = "".join(
        f'<li><a href="#{_esc(k)}">{_esc(t)}</a>{" <em>(" + _esc(s) + ")</em>" if s else ""}</li>' for k, t, s in toc
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>zoo-study report — {_esc(root.name)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>zoo-study report</h1>
<p class="meta">Results root <code>{_esc(root)}</code> · built {now}. Every number below comes from a
named query in <code>analysis/queries</code> over the Parquet files of this root; re-run any of them with
<code>zoo-study sql</code>. Stages: {_esc(STAGE_ORDER)}.</p>
{claims}
<section id="overview">
<h2>Overview</h2>
{overview}
<h3>Failed jobs</h3>
{failures}
</section>
<nav><h2>Contents</h2><ul>{items}</ul></nav>
{chr(10).join(sections)}
</body>
</html>
"""
