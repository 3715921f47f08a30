"""``build_report``: from empty, partial, complete and broken roots; checked in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.figures import FIGURES
from analysis.report import build_report
from analysis.tables import TABLES
from helpers.analysis_fixtures import RootBuilder, add_cross_domain, add_related_methods, build_full_root, build_partial_root

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects what the tests look at: section ids, images, links, and the classes of paragraphs."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tables_in: dict[str, int] = {}
        self.messages: dict[str, list[tuple[str, str]]] = {}
        self._section = ""
        self._p_class: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section = a.get("id", "")
            self.sections.append(self._section)
        elif tag == "img":
            self.imgs.append({**a, "section": self._section})
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "table":
            self.tables_in[self._section] = self.tables_in.get(self._section, 0) + 1
        elif tag == "p" and a.get("class") in ("missing", "error"):
            self._p_class, self._text = a["class"], []

    def handle_data(self, data: str) -> None:
        if self._p_class:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "p" and self._p_class:
            self.messages.setdefault(self._section, []).append((self._p_class, "".join(self._text)))
            self._p_class = None


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


FIG_KEYS = [f.key for f in FIGURES]
TAB_KEYS = [t.key for t in TABLES]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full")
    b = build_full_root(root)
    add_related_methods(b)
    add_cross_domain(b)
    return build_report(root)


# -------------------------------------------------------------------------------------------- roots
def test_report_from_an_empty_root_says_what_to_run(tmp_path: Path) -> None:
    out = build_report(tmp_path)
    assert out == tmp_path / "report" / "index.html"
    page = parse(out)
    assert page.sections == ["claims", "overview"] + FIG_KEYS + TAB_KEYS + ["which_teacher"]
    assert page.imgs == []
    for key in FIG_KEYS + TAB_KEYS:
        kinds = page.messages.get(key)
        assert kinds and kinds[0][0] == "missing", key
    text = out.read_text()
    assert page.messages["fig1a"][0][1] == "No data yet: no pair scores (scores/pairs.parquet) yet: run the score stage."
    assert page.messages["fig4a"][0][1] == (
        "No data yet: no transfer results (transfers/*/summary.parquet) yet: run the transfer stage."
    )
    assert "No failed jobs." in text
    assert not list((tmp_path / "report").rglob("*.png"))


def test_report_from_a_partial_root(tmp_path: Path) -> None:
    build_partial_root(tmp_path)
    page = parse(build_report(tmp_path))
    with_images = {i["section"] for i in page.imgs}
    assert with_images == {"fig1a", "fig1b", "fig2a", "which_teacher"}  # kappa vs rho_pos of the scored pairs
    for key in ("fig4a", "fig5a", "fig7", "fig8", "fig11", "tab1", "tab2", "tab4"):
        cls, msg = page.messages[key][0]
        assert cls == "missing" and "run the transfer stage" in msg, (key, msg)
    assert "hparams/*.parquet" in page.messages["tab_hparams"][0][1]
    assert (tmp_path / "report" / "figures" / "fig1a.csv").is_file()
    assert not (tmp_path / "report" / "figures" / "fig4a.png").exists()


def test_full_root_has_every_figure_and_table(full_report: Path) -> None:
    page = parse(full_report)
    report_dir = full_report.parent
    assert page.messages == {}, page.messages  # nothing missing, nothing failed
    assert [i["section"] for i in page.imgs if i["section"] != "which_teacher"] == FIG_KEYS
    # Which teacher?: kappa vs rho_pos, and predicted vs observed for each method with enough transfers
    assert sum(i["section"] == "which_teacher" for i in page.imgs) >= 2
    for img in page.imgs:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix) :]).startswith(PNG_MAGIC)
        assert img["alt"]
    for key in TAB_KEYS:
        assert page.tables_in.get(key) == 1, key
    for key in FIG_KEYS:
        assert (report_dir / "figures" / f"{key}.png").read_bytes().startswith(PNG_MAGIC)
        assert (report_dir / "figures" / f"{key}.csv").stat().st_size > 0
    for key in TAB_KEYS:
        assert (report_dir / "tables" / f"{key}.csv").stat().st_size > 0
    for href in page.links:  # every relative link points at a file that exists
        if not href.startswith(("#", "http")):
            assert (report_dir / href).is_file(), href
    assert not [p for p in report_dir.rglob("*") if p.name.endswith(".tmp")]
    assert full_report.stat().st_mode & 0o044 == 0o044


def test_overview_counts_and_failures_in_the_page(full_report: Path) -> None:
    text = full_report.read_text()
    start = text.index('<section id="overview">')
    overview = text[start : text.index("</section>", start)]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", overview)
    counts = dict(zip(cells[0::3], cells[1::3]))
    assert counts["models"] == "9"  # with the cross-domain teacher (add_cross_domain)
    assert counts["scored pairs"] == "22"  # 3 students x (4 teachers + random + 2 other students), + t_sketch
    # 60 of the study + 6 multi-teacher baselines + 4 related-methods runs + 2 from the cross-domain teacher
    assert counts["single-teacher transfers"] == "72"
    assert counts["multi-teacher transfers"] == "7"  # 6 + the AMTML-KD run
    assert counts["failed jobs"] == "1"
    assert "job_failed_1" in overview and "NaN loss at epoch 2" in overview


def test_report_opens_with_the_claims_table(full_report: Path) -> None:
    from analysis.claims import VERDICTS

    text = full_report.read_text()
    page = parse(full_report)
    assert page.sections[0] == "claims"
    claims = text[text.index('<section id="claims">') : text.index('<section id="overview">')]
    assert text.index('<section id="claims">') < text.index("<img")  # before every figure
    assert page.tables_in["claims"] == 1 and 'class="data claims"' in claims
    ids = re.findall(r'<tr data-claim="([^"]+)">', claims)
    assert ids == ["1", "2", "3a", "3b", "4a", "4b", "4c", "5", "6a", "6b_pos", "6b_neg", "7a", "7b"]
    verdicts = re.findall(r'<td class="verdict (v-[a-z]+)" data-verdict="([^"]+)">', claims)
    assert len(verdicts) == len(ids) and all(v in VERDICTS for _, v in verdicts)
    assert {c for c, _ in verdicts} <= {"v-holds", "v-fails", "v-power", "v-nodata"}
    assert "95% interval" in claims and "not enough power to tell" in claims
    assert "80 eval samples per transfer" in claims and "1 seed per (method, pair)" in claims
    assert "KL+DP" in claims and "{kl_dp}" not in claims  # method keys shown with the registry's labels
    assert (full_report.parent / "tables" / "claims.csv").stat().st_size > 0


def test_claims_on_an_empty_root_say_no_data(tmp_path: Path) -> None:
    text = build_report(tmp_path).read_text()
    claims = text[text.index('<section id="claims">') : text.index('<section id="overview">')]
    verdicts = re.findall(r'data-verdict="([^"]+)"', claims)
    assert verdicts and set(verdicts) == {"no data"}
    assert 'class="error"' not in claims


def test_fig4a_draws_both_success_rates(tmp_path: Path) -> None:
    from analysis.db import connect
    from analysis.figures import FIGURES_BY_KEY, figure_png

    b = RootBuilder(tmp_path)
    b.transfer("S", "T1", "kl_dp", 0.018, n_gain=20, n_loss=2)
    b.transfer("S", "T2", "kl_dp", 0.002, n_gain=3, n_loss=1)
    b.transfer("S", "T1", "kl", -0.001, n_gain=3, n_loss=4)
    with connect(tmp_path) as db:
        t = db.named("fig4a_success_rate")
    assert {"success_rate_pct", "sig_success_rate_pct", "harmed_pct"} <= set(t.column_names)
    fig = FIGURES_BY_KEY["fig4a"].draw(t)
    labels = [x.get_text() for x in fig.axes[0].get_legend().get_texts()]
    assert labels == ["Δ > 0", "Δ significantly > 0 (McNemar p < 0.05)"]
    assert len(fig.axes[0].patches) >= 4  # a box per method and rate (patch_artist boxes)
    assert figure_png(fig).startswith(PNG_MAGIC)


def test_delta_best_is_labelled_optimistic(full_report: Path) -> None:
    text = full_report.read_text()
    for key in ("tab2", "tab9"):
        sec = text[text.index(f'<section id="{key}">') :]
        sec = sec[: sec.index("</section>")]
        assert "optimistic (best epoch chosen on the eval split)" in sec, key


def test_a_corrupt_file_is_left_out_and_named(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.transfer("S", "T", "kl_dp", 0.01)
    bad = b.layout.transfer_summary("broken")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not parquet")
    out = build_report(tmp_path)
    page = parse(out)
    assert {i["section"] for i in page.imgs} == {"fig4a", "fig7", "fig8"}
    assert page.messages["overview"][0][0] == "error"
    assert "transfers/broken/summary.parquet" in out.read_text()


def test_a_failing_query_fails_its_section_not_the_report(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.pair_row("T", "S", acc_t=0.8, acc_s=0.7, rho_pos=0.1, class_flips={0: 3, 1: 1})
    b.write_scores()
    b.transfer("S", "T", "kl_dp", 0.01)
    # a second summary whose delta_last is text: DuckDB cannot average it
    t = pq.read_table(next(b.layout.transfers_dir.glob("*/summary.parquet")))
    t = t.set_column(t.column_names.index("delta_last"), "delta_last", pa.array(["oops"]))
    t = t.set_column(t.column_names.index("job_id"), "job_id", pa.array(["textual"]))
    (b.layout.transfers_dir / "textual").mkdir()
    pq.write_table(t, b.layout.transfer_summary("textual"))
    page = parse(build_report(tmp_path))
    assert {"fig1a", "fig1b", "fig2a"} <= {i["section"] for i in page.imgs}
    cls, msg = page.messages["fig4a"][0]
    assert cls == "error" and "fig4a_success_rate" in msg


def test_rebuild_drops_figures_whose_data_went_away(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.transfer("S", "T", "kl_dp", 0.01)
    build_report(tmp_path)
    fig = tmp_path / "report" / "figures" / "fig4a.png"
    assert fig.is_file()
    shutil.rmtree(b.layout.transfers_dir)
    page = parse(build_report(tmp_path))
    assert not fig.exists() and not fig.with_suffix(".csv").exists()
    assert page.messages["fig4a"][0][0] == "missing"


def test_a_full_disk_keeps_the_old_report_whole_and_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """Issue 22: ENOSPC mid-build crashed the report stage and left the old index.html beside new figures."""
    import errno

    from analysis import report as report_mod
    from pipelines.cli import main

    b = RootBuilder(tmp_path)
    b.transfer("S", "T", "kl_dp", 0.01)
    build_report(tmp_path)
    report_dir = tmp_path / "report"
    before = {p.relative_to(report_dir): p.read_bytes() for p in report_dir.rglob("*") if p.is_file()}
    b.transfer("S", "T2", "kl_dp", 0.02)  # new data: every figure of the next build differs
    real, written = report_mod.write_bytes_atomic, []

    def fills_the_disk(data: bytes, path: Path) -> Path:
        if len(written) == 3:  # some figures are written, index.html is not yet
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written.append(path)
        return real(data, path)

    monkeypatch.setattr(report_mod, "write_bytes_atomic", fills_the_disk)
    with pytest.raises(report_mod.ReportError, match="No space left on device"):
        build_report(tmp_path)
    written.clear()
    try:
        code = main(["report", str(tmp_path)])
    except SystemExit as exc:
        code = int(exc.code)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "No space left on device" in err, err
    after = {p.relative_to(report_dir): p.read_bytes() for p in report_dir.rglob("*") if p.is_file()}
    assert after == before  # the old report, whole: no new figure beside the old page
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []  # no temp folder left


def test_a_symlink_leading_outside_is_skipped_with_a_warning(tmp_path: Path) -> None:
    """Issue 22: one ``transfers/evil -> elsewhere`` made every query, even ``SELECT 1``, and the report crash."""
    from analysis.sql_cli import run_sql

    root = tmp_path / "root"
    b = RootBuilder(root)
    b.transfer("S", "T", "kl_dp", 0.01)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (summary,) = root.glob("transfers/*/summary.parquet")
    shutil.copy(summary, elsewhere / "summary.parquet")  # a readable file, but not the root's
    (root / "transfers" / "evil").symlink_to(elsewhere)
    (root / "transfers" / "inside").symlink_to(summary.parent)  # a link that stays inside is read
    warned: list[str] = []
    assert run_sql(root, "SELECT 1 AS one", warn=warned.append).to_pylist() == [{"one": 1}]
    assert run_sql(root, "SELECT count(*) AS n FROM transfers", warn=None).to_pylist() == [{"n": 2}]
    assert warned == [f"skipped transfers/evil/summary.parquet: a symlink that leads outside the results root "
                      f"(to {(elsewhere / 'summary.parquet').resolve()})"]
    page = build_report(root).read_text()
    assert "transfers/evil/summary.parquet" in page and "leads outside the results root" in page


def test_a_report_folder_that_is_a_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    build_partial_root(tmp_path / "root")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the report's")
    (tmp_path / "root" / "report").symlink_to(elsewhere)
    index = build_report(tmp_path / "root")
    assert not index.parent.is_symlink() and index.is_file()
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------------------------- headless browser
_CANDIDATES = ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
CHROMIUM = next((p for p in _CANDIDATES if p and os.path.exists(p)), None)

_IMAGE_PROBE = """
<script>
window.addEventListener("load", function () {
  var out = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    out.push({figure: im.getAttribute("data-figure") || im.id, complete: im.complete, width: im.naturalWidth});
  }
  var pre = document.createElement("pre");
  pre.id = "image-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


@pytest.mark.timeout(240)
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium chromium-driver)")
def test_every_image_loads_in_headless_chromium(full_report: Path, tmp_path: Path) -> None:
    # Copy the page (alone: proving it needs nothing beside it), add a probe that writes each image's
    # decoded width into the DOM, plus a deliberately broken image to prove the probe can fail.
    page = tmp_path / "alone" / "index.html"
    page.parent.mkdir()
    html = full_report.read_text(encoding="utf-8")
    control = '<img id="control-broken" src="does-not-exist.png" alt="control">'
    page.write_text(html.replace("</body>", control + _IMAGE_PROBE + "</body>"), encoding="utf-8")
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=10000", "--dump-dom",
        page.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<pre id="image-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, "the probe did not run; DOM tail:\n" + proc.stdout[-1000:]
    images = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    control_img = [i for i in images if i["figure"] == "control-broken"]
    assert control_img and control_img[0]["width"] == 0  # a broken image is detected
    figures = [i for i in images if i["figure"] != "control-broken"]
    assert [i["figure"] for i in figures if not i["figure"].startswith("which_teacher")] == FIG_KEYS
    assert "which_teacher_kappa" in [i["figure"] for i in figures]  # the Which teacher? section's figures
    for img in figures:
        assert img["complete"] and img["width"] > 100, img
    assert "zoo-study report" in proc.stdout
