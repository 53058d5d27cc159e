"""report.html in a real browser (headless Chromium): tables render, plots show, model text stays text, and
the answer browser's filters (the page's only script) work.

Skips with a reason when no Chromium is installed (CI installs Debian's `chromium`)."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from urllib.parse import quote, urlencode

import numpy as np
import pytest
from report_fixtures import SCRIPT_ANSWER

from unsafe_concepts.report.html import TITLE

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def chromium(tmp_path: Path, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chrome-profile'}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class RenderedDom(HTMLParser):
    """What the browser ended up with: title, table rows per table, <script> elements, answer texts."""

    def __init__(self):
        super().__init__()
        self.title, self.scripts, self.images = "", 0, []
        self.rows: dict[str, int] = {}
        self.answers: list[str] = []
        self.browser_rows: list[dict] = []  # rows of the answer browser: data-* attributes and 'hidden'
        self.sections: dict[str, dict] = {}
        self._table = None
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "title":
            self._in = "title"
        elif tag == "script":
            self.scripts += 1
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "table":
            self._table = attrs.get("data-table") or attrs.get("id")
        elif tag == "section":
            self.sections[attrs.get("id")] = attrs
        elif tag == "tr" and self._table and self._in != "thead":
            self.rows[self._table] = self.rows.get(self._table, 0) + 1
            if self._table == "answers-table":
                self.browser_rows.append(attrs)
        elif tag == "thead":
            self._in = "thead"
        elif tag == "pre" and "answer" in (attrs.get("class") or ""):
            self._in = "answer"
            self.answers.append("")

    def handle_endtag(self, tag):
        if tag in ("title", "thead", "pre"):
            self._in = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._in == "title":
            self.title += data
        elif self._in == "answer":
            self.answers[-1] += data


def test_harness_detects_a_script_that_runs(tmp_path):
    """Negative control: an unescaped script on a page without our safeguards does change the title."""
    page = tmp_path / "bad.html"
    page.write_text("<html><head><title>before</title></head><body><script>document.title='pwned'</script></body></html>")
    dom = RenderedDom()
    dom.feed(chromium(tmp_path, "--dump-dom", page.as_uri()))
    assert dom.title == "pwned"


def test_report_renders_in_chromium(built_report, tmp_path):
    dom = RenderedDom()
    dom.feed(chromium(tmp_path, "--dump-dom", built_report.html_path.as_uri()))
    assert dom.title == TITLE  # the injected <script> answers did not run
    assert dom.scripts == 1  # the answer browser's own, allowed by its hash
    assert SCRIPT_ANSWER in dom.answers  # ... and they are shown as text
    assert any(a.startswith("<img src=x onerror=") for a in dom.answers)
    # one body row per model (or model x context) in each paper table
    assert dom.rows["perception"] == 2 and dom.rows["alignment_visual"] == 2
    assert dom.rows["alignment_textual"] == 1 and dom.rows["modality_gap"] == 1
    assert dom.rows["context_visual"] == 2 and dom.rows["context_gap"] == 2
    assert dom.rows["modality_gap_concepts"] == 2
    assert dom.rows["post_training"] == 1
    assert len(dom.images) == 5 and all(src.startswith("data:image/png;base64,") for src in dom.images)
    # the answer browser: every answer of every run, all shown before any filter
    assert len(dom.browser_rows) == sum(len(r.rows) for r in built_report.runs)
    assert not any("hidden" in row for row in dom.browser_rows)
    assert dom.sections["answers"]["data-ready"] == "1"  # the page's script ran


def test_report_screenshot_shows_tables_and_plots(built_report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,7000", built_report.html_path.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (7000, 1280)
    # the plots' bar colours appear (full, or pale where few answers back a bar): the PNGs were drawn
    def colour(rgb):
        pale = 0.45 * np.array(rgb) + 0.55 * 255
        return sum((np.abs(pixels - c).sum(axis=2) < 30).sum() for c in (rgb, pale))

    assert colour([217, 95, 2]) > 2000 and colour([117, 112, 179]) > 2000 and colour([27, 158, 119]) > 2000
    # the untrained-vision banner (light red box) is drawn near the top
    banner = (np.abs(pixels[:400] - [253, 236, 234]).sum(axis=2) < 6).sum()
    assert banner > 10000


def _browse(tmp_path, report, query: str) -> RenderedDom:
    dom = RenderedDom()
    dom.feed(chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom",
                      report.html_path.as_uri() + "#answers?" + query))
    return dom


def _expected(report, **want) -> list[str]:
    """Ids the filter should keep, from the run folders' rows (not from the page)."""
    keep = []
    for run in report.runs:
        for row in run.rows:
            values = {"model": run.system, "task": run.task, "category": row.get("category"),
                      "verdict": "error" if row.get("error") else row.get("verdict")}
            if all(values[k] == v for k, v in want.items()):
                keep.append(str(row["id"]))
    return keep


@pytest.mark.parametrize("want", [
    {"verdict": "unclear"},
    {"model": "tiny-vlm [untrained vision]", "task": "alignment", "category": "Hate", "verdict": "safe"},
])
def test_answer_browser_filters(built_report, tmp_path, want):
    """The filters, set through the page's link format (the script sets each select and fires its change
    event, as a click would), keep exactly the rows that match, and say how many."""
    dom = _browse(tmp_path, built_report, urlencode(want, quote_via=quote))
    shown = [row for row in dom.browser_rows if "hidden" not in row]
    expected = _expected(built_report, **want)
    assert expected, "the case must select something"
    assert len(shown) == len(expected) < len(dom.browser_rows)
    for row in shown:
        assert all(row[f"data-{k}"] == v for k, v in want.items())
    assert dom.sections["answers"]["data-shown"] == str(len(expected))
    assert dom.title == TITLE  # still no injected script ran


def test_answer_browser_text_search_and_unknown_values(built_report, tmp_path):
    # a verdict the page has no option for leaves that filter at 'all'; the search finds the two injected
    # answers as text
    dom = _browse(tmp_path, built_report, "verdict=" + quote("<script>x</script>") + "&q=pwned")
    shown = [row for row in dom.browser_rows if "hidden" not in row]
    assert len(shown) == 2 and {row["data-verdict"] for row in shown} == {"unclear"}
    assert dom.title == TITLE
