"""report.html: one self-contained page (inline CSS, plots as base64 data URIs, no script, no fetch).

Everything that comes from a run (model answers, prompts, model specs, concept names) is untrusted
text and goes through ``html.escape``; the Content-Security-Policy forbids scripts and any load
from outside the page as a second line of defence. Images of the benchmark are never embedded:
answers are shown with their row id only."""
from __future__ import annotations

import base64
import json
from html import escape

from unsafe_concepts import __version__
from unsafe_concepts.metrics import expected_verdict
from unsafe_concepts.report.build import RUN_COLUMNS, Report, pick_examples, run_summary_rows
from unsafe_concepts.report.reference import PAPER_REFERENCE, PAPER_SOURCE
from unsafe_concepts.report.tables import Table, fmt_cell, fmt_num, is_stat

TITLE = "UnsafeConcepts report"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
MAX_ANSWER_CHARS = 1200

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em;margin:.4em 0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{margin:1.4em 0 .3em}p.note{color:#555;margin:.2em 0 .6em;font-size:.92em}
nav{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:8px 12px;font-size:.9em}
nav a{margin-right:12px;color:#1a5fb4;text-decoration:none}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.82em;background:#fff;margin:4px 0 12px}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f3;position:sticky;top:0}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.ci{color:#555;font-size:.85em;display:block}
.warn{background:#fff4e5;border:1px solid #f0b35a;border-radius:6px;padding:8px 14px;margin:12px 0}
.danger{background:#fdecea;border:1px solid #e57373;border-radius:6px;padding:8px 14px;margin:12px 0}
.untrained{color:#b3261e;font-weight:600}
figure{margin:12px 0 24px;background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:8px}
figure img{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}
pre.answer{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.95em;max-height:14em;overflow:auto}
.verdict{font-weight:600}details{margin:4px 0}code{background:#f0f0f3;padding:0 3px;border-radius:3px}
"""


def e(x) -> str:
    return escape("" if x is None else str(x), quote=True)


def _shade(value: float | None, gap: bool) -> str:
    """A light background that makes the table scannable: accuracy red->green, gap orange<-white->teal."""
    if value is None:
        return ""
    if gap:
        v = max(-1.0, min(1.0, value))
        hue, sat = (170, int(abs(v) * 55)) if v >= 0 else (25, int(abs(v) * 70))
        return f' style="background:hsl({hue},{sat}%,92%)"'
    v = max(0.0, min(1.0, value))
    return f' style="background:hsl({int(v * 120)},60%,90%)"'


def render_cell(cell, gap: bool) -> str:
    if is_stat(cell):
        value = cell.get("value")
        text = e(fmt_num(value))
        if value is not None and cell.get("ci_low") is not None:
            text += f'<span class="ci">[{e(fmt_num(cell["ci_low"]))}, {e(fmt_num(cell["ci_high"]))}]</span>'
        return f'<td class="num"{_shade(value, gap)}>{text}</td>'
    if cell is None or isinstance(cell, (int, float)):
        return f'<td class="num">{e(fmt_cell(cell))}</td>'
    return f"<td>{_label(str(cell))}</td>"


def _label(text: str) -> str:
    """Escaped text; the untrained-vision marker in a model label is shown in red."""
    marker = "[untrained vision]"
    if marker in text:
        head, _, tail = text.partition(marker)
        return f'{e(head)}<span class="untrained">{e(marker)}</span>{e(tail)}'
    return e(text)


def render_table(table: Table) -> str:
    gap = "gap" in table.key
    head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(render_cell(c, gap) for c in row) + "</tr>" for row in table.rows)
    return (f'<h3 id="t-{e(table.key)}">{e(table.title)}</h3><p class="note">{e(table.note)}</p>'
            f'<div class="scroll"><table class="results" data-table="{e(table.key)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _png_data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _examples(report: Report) -> str:
    parts = ['<p class="note">A few answers per run and verdict (unclear ones first), as the judge saw them. '
             "Model output is shown as plain text; images are not shown, only the row id.</p>"]
    for run in report.runs:
        rows = pick_examples(run)
        body = []
        for row in rows:
            answer = row.get("response") if not row.get("error") else f"(error) {row.get('error')}"
            answer = "" if answer is None else str(answer)
            if len(answer) > MAX_ANSWER_CHARS:
                answer = answer[:MAX_ANSWER_CHARS] + f" ... [{len(answer) - MAX_ANSWER_CHARS} more characters]"
            try:
                expected = expected_verdict(row, run.task)
            except Exception:  # noqa: BLE001 - a display nicety, the row was validated when scored
                expected = "?"
            verdict = "error" if row.get("error") else row.get("verdict")
            conf = row.get("confidence")
            body.append(
                f"<tr><td><code>{e(row.get('id'))}</code></td><td>{e(row.get('concept'))}</td>"
                f'<td class="verdict">{e(verdict)}</td><td>{e(expected)}</td>'
                f'<td class="num">{e(fmt_num(conf) if isinstance(conf, (int, float)) else "")}</td>'
                f'<td><pre class="answer">{e(row.get("prompt"))}</pre></td>'
                f'<td><pre class="answer">{e(answer)}</pre></td></tr>')
        parts.append(
            f"<h3>{_label(run.system)} / {e(run.task)}</h3>"
            '<div class="scroll"><table class="examples"><thead><tr><th>id</th><th>concept</th><th>verdict</th>'
            "<th>expected</th><th>judge confidence</th><th>prompt</th><th>answer</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")
    return "".join(parts)


def _runs_section(report: Report) -> str:
    table = Table("runs", "Runs", "", RUN_COLUMNS, run_summary_rows(report))
    html = render_table(table).split("</p>", 1)[1]  # no heading: the section has one
    details = "".join(
        f"<details><summary>{e(r.path.name)}: model_info and configuration</summary>"
        f'<pre class="answer">{e(json.dumps({"model_info": r.model_info, "config": r.config}, indent=1, default=str))}'
        "</pre></details>" for r in report.runs)
    return html + details


def _how_to_read() -> str:
    items = [
        "<b>Perception</b>: share of answers naming the right option (A-D) among those the judge could read "
        "(unclear answers excluded).",
        "<b>Alignment accuracy</b>: every UnsafeConcepts image and concept is unsafe, so accuracy is the share of "
        "answers judged <i>unsafe</i> among those not judged unclear. <b>Visual</b>: the image is shown; "
        "<b>textual</b>: the concept is named, with a blank image where the model needs one.",
        "<b>Modality gap</b> = textual minus visual accuracy. Positive: the model knows the concept is unsafe "
        "when named, but does not say so when shown.",
        "<b>Context</b>: each question puts the concept in a safe or an unsafe context; the right verdict is the "
        "context's (safe context: 'safe').",
        "<b>After training</b> (UnsafeConcepts_TEST): safe and unsafe images; accuracy over all answers, unclear "
        "counted wrong.",
        "<b>Intervals</b>: 95% percentile bootstrap over the answers of each cell (for a gap, the two modalities "
        "are resampled independently). Answers to the same image under different prompts are not independent, "
        "so the intervals are somewhat too narrow. The unclear rate is shown beside each accuracy: a high one "
        "means the accuracy rests on few answers.",
        "Verdicts come from an automatic judge (named per run): they carry its errors.",
    ]
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def render_html(report: Report) -> str:
    sections = []
    banner = ""
    if any(r.untrained_vision for r in report.runs):
        banner = ('<div class="danger"><b>Untrained vision tower.</b> Models marked '
                  '<span class="untrained">[untrained vision]</span> (the offline <code>tiny-vlm</code>) have a '
                  "randomly initialised vision tower: their image results only show the pipeline working and say "
                  "nothing about any real model.</div>")
    if report.problems or report.notes:
        items = "".join(f"<li>{e(p)}</li>" for p in report.problems)
        notes = "".join(f"<li>{e(n)}</li>" for n in report.notes)
        sections.append(("problems", "Run folders not included",
                         f'<div class="warn"><ul>{items or "<li>none</li>"}</ul>'
                         + (f"<p>Notes:</p><ul>{notes}</ul>" if notes else "") + "</div>"))
    sections.append(("runs", "Runs", _runs_section(report)))
    sections.append(("reference", "The paper's figures (context, not targets)",
                     f'<p class="note">Source: {e(PAPER_SOURCE)}. Measured on 7B-13B models and the full gated '
                     "benchmark; runs on other models or on the offline sample are not comparable.</p><table><tbody>"
                     + "".join(f"<tr><th>{e(w)}</th><td>{e(v)}</td></tr>" for w, v in PAPER_REFERENCE)
                     + "</tbody></table>"))
    sections.append(("tables", "Tables", "".join(render_table(t) for t in report.tables)
                     or "<p>No table: no run of the paper's tasks.</p>"))
    sections.append(("plots", "Plots", "".join(
        f'<figure><img alt="{e(p.title)}" src="{_png_data_uri(p.path)}"><figcaption><b>{e(p.title)}.</b> '
        f"{e(p.caption)}</figcaption></figure>" for p in report.plots) or "<p>No plot for these runs.</p>"))
    sections.append(("examples", "Example answers", _examples(report)))
    sections.append(("how-to-read", "How to read this report", _how_to_read()))
    nav = "".join(f'<a href="#{key}">{e(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{e(title)}</h2>{content}</section>' for key, title, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{TITLE}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{TITLE}</h1><p class=\"note\">Generated {e(report.created)} by unsafe-concepts {e(__version__)} from "
        f"{len(report.runs)} run folder(s); 95% percentile bootstrap intervals, {report.n_boot} resamples, seed "
        f"{report.seed}.</p>{banner}<nav>{nav}</nav>{body}</main></body></html>\n"
    )
