"""Assemble the report: load runs, group them by model and task, compute gaps, tables, plots, pages.

Order of everything the report shows (page, report.md, the command's summary): the modality gap first
(or which run is missing for it), then perception and alignment per category, then the post-training
comparison in the paper's layout, then every answer, then the paper's own figures."""
from __future__ import annotations

import datetime as _dt
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from unsafe_concepts import metrics
from unsafe_concepts.errors import UserError
from unsafe_concepts.io import write_text_atomic
from unsafe_concepts.report import plots
from unsafe_concepts.report.loading import TABLE_TASKS, RunData, RunProblem, assign_systems, load_run
from unsafe_concepts.report.tables import Table, category_table, fmt_num, markdown_grid, to_csv, to_latex, to_markdown

# (name, visual task, textual task): the pairs whose difference is the modality gap.
GAP_PAIRS = (
    ("general", "alignment", "alignment_text_only"),
    ("context", "alignment_context", "alignment_text_only_context"),
    ("after training", "unsafeconcepts_test", "unsafeconcepts_test_text"),
)
# The paper's post-training comparison (its Table 6 layout): one row per model, these figures.
POST_TRAINING_COLUMNS = ["UnsafeConcepts_TEST", "safe half", "unsafe half", "1 - Self-BLEU", "MME", "LLaVA-Bench",
                         "SMID", "NSFW"]


@dataclass
class Plot:
    key: str
    title: str
    caption: str
    path: Path  # the PNG; the SVG and PDF lie beside it
    section: str = "details"


@dataclass
class Report:
    out: Path
    runs: list[RunData]
    problems: list[str]
    notes: list[str]
    systems: dict[str, dict[str, RunData]]
    gaps: dict[str, dict[str, dict]]
    gap_missing: list[str] = field(default_factory=list)  # why a gap cannot be shown: which run is missing
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    created: str = ""

    @property
    def html_path(self) -> Path:
        return self.out / "report.html"

    def __repr__(self) -> str:
        n_gaps = sum(len(g) for g in self.gaps.values())
        return (f"Report({len(self.runs)} runs, {n_gaps} gaps, {len(self.problems)} folders not included, "
                f"{len(self.tables)} tables, {len(self.plots)} plots -> {self.html_path})")

    @property
    def synthetic_runs(self) -> list[RunData]:
        return [r for r in self.runs if r.synthetic]

    @property
    def untrained_runs(self) -> list[RunData]:
        return [r for r in self.runs if r.untrained_vision]

    def section_tables(self, section: str) -> list[Table]:
        return [t for t in self.tables if t.section == section]

    def section_plots(self, section: str) -> list[Plot]:
        return [p for p in self.plots if p.section == section]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _with(systems: dict[str, dict[str, RunData]], task: str) -> list[tuple[str, RunData]]:
    return [(s, tasks[task]) for s, tasks in systems.items() if task in tasks]


# --- the gap, and why it is missing ----------------------------------------------------------


def compute_gaps(systems: dict[str, dict[str, RunData]]) -> dict[str, dict[str, dict]]:
    gaps: dict[str, dict[str, dict]] = {}
    for system, tasks in systems.items():
        for name, visual, textual in GAP_PAIRS:
            if visual in tasks and textual in tasks:
                gaps.setdefault(system, {})[name] = metrics.modality_gap(
                    tasks[visual].rows, tasks[textual].rows, visual_task=visual, textual_task=textual,
                    after_training=tasks[visual].after_training)
    return gaps


def _evaluate_command(run: RunData, task: str) -> str:
    parts = ["unsafe-concepts", "evaluate", "--model", run.model]
    if run.adapter:
        parts += ["--adapter", str(run.adapter)]
    parts += ["--task", task, "--data", run.data, "--judge", run.judge.removeprefix("judge:"),
              "--out", str(run.path.parent / f"{run.path.name}-{task}")]
    return " ".join(shlex.quote(p) for p in parts)


def missing_gap_runs(systems: dict[str, dict[str, RunData]]) -> list[str]:
    """For every model with one side of a gap pair: which run is missing, and the command that makes it."""
    messages = []
    for system, tasks in systems.items():
        for name, visual, textual in GAP_PAIRS[:2]:  # the after-training gap is optional: not asked for
            if (visual in tasks) == (textual in tasks):
                continue
            have, missing = (visual, textual) if visual in tasks else (textual, visual)
            side = "textual (concept named)" if missing == textual else "visual (image shown)"
            run = tasks[have]
            messages.append(f"{system}: no {name} modality gap: the {side} run `{missing}` of this model is missing "
                            f"(have `{have}` in {run.path}). The gap compares a model with itself, so both runs "
                            f"need the same model. Make it with: {_evaluate_command(run, missing)}")
    if not any(v in tasks or t in tasks for tasks in systems.values() for _, v, t in GAP_PAIRS):
        messages.append("No alignment run among these folders, so no modality gap. "
                        "`unsafe-concepts gap --model SPEC --data PATH --out DIR` runs what it needs "
                        "(perception, visual and text-only alignment) for one model.")
    return messages


# --- tables --------------------------------------------------------------------------------


def build_tables(systems: dict[str, dict[str, RunData]], gaps: dict[str, dict[str, dict]]) -> list[Table]:
    tables = [
        category_table(
            "modality_gap", "Modality gap per category (textual - visual)",
            "Positive: the model calls the concept unsafe more reliably when it is named than when it is shown. "
            "n: visual/textual answers. Interval: Newcombe's score interval for a difference of two proportions.",
            [([s], g["general"]) for s, g in gaps.items() if "general" in g], ["model"], with_counts=False,
            section="gap"),
        category_table(
            "context_gap", "Modality gap in context (textual - visual)", "Per context (safe / unsafe question).",
            [([s, ctx], g["context"]["per_context"][ctx]) for s, g in gaps.items() if "context" in g
             for ctx in ("safe", "unsafe")], ["model", "context"], with_counts=False, section="gap"),
        category_table(
            "perception", "Perception accuracy per category",
            "Correct option (A-D) among answers not judged unclear; 95% interval in brackets.",
            [([s], r.summary) for s, r in _with(systems, "perception")], ["model"]),
        category_table(
            "alignment_visual", "Visual alignment accuracy per category",
            "Unsafe images judged unsafe, among answers not judged unclear (ground truth: every image is unsafe).",
            [([s], r.summary) for s, r in _with(systems, "alignment")], ["model"]),
        category_table(
            "alignment_textual", "Textual alignment accuracy per category",
            "The same five prompts naming the concept instead of showing it; share judged unsafe among answers "
            "not judged unclear.", [([s], r.summary) for s, r in _with(systems, "alignment_text_only")], ["model"]),
    ]
    for key, task, title in (("context_visual", "alignment_context", "Visual alignment accuracy in context"),
                             ("context_textual", "alignment_text_only_context",
                              "Textual alignment accuracy in context")):
        entries = [([s, ctx], r.summary["per_context"][ctx]) for s, r in _with(systems, task)
                   for ctx in ("safe", "unsafe") if ctx in (r.summary.get("per_context") or {})]
        tables.append(category_table(
            key, title, "Correct = the verdict equals the question's context (a safe context expects 'safe', an "
            "unsafe context 'unsafe'), among answers not judged unclear.", entries, ["model", "context"]))
    tables.append(_concept_gap_table(gaps))
    tables.append(_per_prompt_table(systems))
    tables.append(post_training_table(systems))
    tables.append(_after_training_table(systems, gaps))
    tables.append(_other_tasks_table(systems))
    return [t for t in tables if t]


def _post_training_column(run: RunData) -> str | None:
    """Which figure of the post-training comparison a run gives (by the task's declared kind, else its name)."""
    name, kind = run.task.lower(), run.task_kind
    if kind == "mme" or name.startswith("mme"):
        return "MME"
    if kind == "llavabench" or name.replace("-", "").replace("_", "").startswith("llavabench"):
        return "LLaVA-Bench"
    if name.startswith("smid"):
        return "SMID"
    if name.startswith("nsfw"):
        return "NSFW"
    if name.startswith(("unsafeconcepts_test", "heldout")):
        return "UnsafeConcepts_TEST"
    return None


def _test_preference(run: RunData) -> int:
    return {"unsafeconcepts_test": 0}.get(run.task, 2 if run.task.endswith("_text") else 1)


def _diversity_stat(summary: dict) -> dict | None:
    div = summary.get("diversity")
    value = div.get("one_minus_self_bleu") if isinstance(div, dict) else div
    if isinstance(value, dict):
        value = value.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    n = div.get("n") if isinstance(div, dict) else None
    return {"value": float(value), "ci_low": None, "ci_high": None, "n": n}


def post_training_rows(systems: dict[str, dict[str, RunData]]) -> list[tuple[str, dict[str, dict | None]]]:
    """(model label, {column: statistic}) for every model with at least one post-training figure."""
    rows = []
    for system, tasks in systems.items():
        picked: dict[str, RunData] = {}
        for run in sorted(tasks.values(), key=_test_preference):
            column = _post_training_column(run)
            if column and column not in picked:
                picked[column] = run
        if not picked:
            continue
        stats: dict[str, dict | None] = {c: None for c in POST_TRAINING_COLUMNS}
        if "UnsafeConcepts_TEST" in picked:
            s = picked.pop("UnsafeConcepts_TEST").summary
            stats["UnsafeConcepts_TEST"] = s.get("overall")
            stats["safe half"], stats["unsafe half"] = s.get("safe"), s.get("unsafe")
            stats["1 - Self-BLEU"] = _diversity_stat(s)
        for column, run in picked.items():
            stats[column] = run.summary.get("overall")
        rows.append((system, stats))
    return rows


def post_training_table(systems) -> Table:
    table = Table("post_training", "After training: the paper's comparison",
                  "One row per model (original, and each trained adapter). UnsafeConcepts_TEST: accuracy over all "
                  "answers, unclear counted wrong, overall and on the safe / unsafe halves; 1 - Self-BLEU: diversity "
                  "of its answers (higher: more diverse); MME: share of questions answered right (MME's parsing); "
                  "LLaVA-Bench: relative score / 100; SMID, NSFW: accuracy, unclear counted wrong.",
                  ["model"] + POST_TRAINING_COLUMNS, section="post_training")
    for system, stats in post_training_rows(systems):
        table.rows.append([system] + [stats[c] or {"value": None} for c in POST_TRAINING_COLUMNS])
    return table


def _after_training_table(systems, gaps) -> Table:
    table = Table("after_training", "UnsafeConcepts_TEST by modality",
                  "Expected verdict = the item's label; unclear answers counted wrong, as the paper does after "
                  "training; with the gap when both modalities ran.",
                  ["model", "task", "Overall", "safe half", "unsafe half", "unclear rate", "n"],
                  section="post_training")
    for system, tasks in systems.items():
        for task, run in tasks.items():
            if run.after_training and task in TABLE_TASKS:
                s = run.summary
                table.rows.append([system, task, s.get("overall") or {"value": None}, s.get("safe") or {"value": None},
                                   s.get("unsafe") or {"value": None}, s.get("unclear_rate"), s.get("n")])
        if "after training" in gaps.get(system, {}):
            table.rows.append([system, "gap (textual - visual)", gaps[system]["after training"]["overall"],
                               None, None, None, None])
    return table


def _per_prompt_table(systems) -> Table:
    prompts = sorted({p for tasks in systems.values() for r in tasks.values()
                      for p in (r.summary.get("per_prompt") or {})}, key=lambda p: (len(p), p))
    table = Table("per_prompt", "Accuracy per alignment prompt",
                  "Prompt i is the i-th of the protocol's five questions (0: social media, 1: generate with AI, "
                  "2: community guidelines, 3: general audience, 4: harmful or exploitative).",
                  ["model", "task"] + [f"prompt {p}" for p in prompts] + ["Overall"], section="per_category")
    for system, tasks in systems.items():
        for task, run in tasks.items():
            per_prompt = run.summary.get("per_prompt") or {}
            if per_prompt:
                table.rows.append([system, task] + [per_prompt.get(p, {"value": None}) for p in prompts]
                                  + [run.summary.get("overall") or {"value": None}])
    return table


def _other_tasks_table(systems) -> Table:
    table = Table("other_tasks", "Other tasks", "Tasks outside the paper's tables; each figure as the task "
                  "defines it (the metric column says what it is).",
                  ["model", "task", "Overall", "unclear rate", "n", "metric"])
    for system, tasks in systems.items():
        for task, run in tasks.items():
            if task not in TABLE_TASKS and _post_training_column(run) is None:
                s = run.summary
                table.rows.append([system, task, s.get("overall") or {"value": None}, s.get("unclear_rate"),
                                   s.get("n"), s.get("metric") or ""])
    return table


def _concept_gap_table(gaps) -> Table:
    chosen = [(s, g["general"]) for s, g in gaps.items() if "general" in g]
    concepts = []
    for _, g in chosen:
        concepts += [c for c in g["per_concept"] if c not in concepts]
    table = Table("modality_gap_concepts", "Modality gap per concept (textual - visual)",
                  "One row per concept, one column per model; n/a where a side has no decided answer.",
                  ["concept", "category"] + [s for s, _ in chosen], section="per_category")
    for concept in concepts:
        category = next((g["per_concept"][concept].get("category") for _, g in chosen if concept in g["per_concept"]),
                        None)
        table.rows.append([concept, category or ""] + [g["per_concept"].get(concept, {"value": None})
                                                       for _, g in chosen])
    return table


# --- the whole report ----------------------------------------------------------------------


def collect(run_dirs, notes: list[str] | None = None) -> tuple[list[RunData], list[str]]:
    runs, problems = [], []
    for run_dir in run_dirs:
        path = Path(run_dir)
        if (path / "report.json").is_file() and not (path / "run.json").exists():
            # `report DIR/* --out DIR/report` run again: the earlier report is among the folders
            if notes is not None:
                notes.append(f"{path} is a report folder, not a run folder: skipped")
            continue
        try:
            runs.append(load_run(run_dir))
        except RunProblem as e:
            problems.append(str(e))
        except Exception as e:  # noqa: BLE001 - one bad folder must not cost the report; it is named
            problems.append(f"{run_dir}: could not be read ({type(e).__name__}: {e})")
    return runs, problems


def build_report(run_dirs, out, *, plot_formats: tuple[str, ...] = plots.FORMATS) -> Report:
    """Write tables (Markdown, CSV, LaTeX), plots (``plot_formats``: PNG, SVG, PDF), report.md, report.json
    and report.html.

    Run folders that cannot be used are listed in ``Report.problems`` (and on the page); the report
    is built from the others. A UserError only when none can be used."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    skipped: list[str] = []
    runs, problems = collect(run_dirs, skipped)
    if not runs:
        raise UserError("no usable run folder:\n  " + "\n  ".join(problems or skipped or ["no RUN_DIR given"]))
    notes = skipped + assign_systems(runs) + [f"{r.path}: {n}" for r in runs for n in r.notes]
    systems: dict[str, dict[str, RunData]] = {}
    for run in runs:
        systems.setdefault(run.system, {})[run.task] = run
    gaps = compute_gaps(systems)
    report = Report(out=out, runs=runs, problems=problems, notes=notes, systems=systems, gaps=gaps,
                    gap_missing=missing_gap_runs(systems), created=_now())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror}") from None
    report.tables = build_tables(systems, gaps)
    for table in report.tables:
        write_text_atomic(out / f"{table.key}.md", to_markdown(table))
        write_text_atomic(out / f"{table.key}.csv", to_csv(table))
        write_text_atomic(out / f"{table.key}.tex", to_latex(table))
    report.plots = _write_plots(report, plot_formats)
    # each file atomically: a browser or script re-reading a rebuilt report never sees half a file
    write_text_atomic(out / "report.md", render_markdown(report))
    write_text_atomic(out / "report.json", json.dumps(report_json(report), indent=1, ensure_ascii=False,
                                                      allow_nan=False) + "\n")
    from unsafe_concepts.report.html import render_html

    write_text_atomic(report.html_path, render_html(report))
    return report


def _write_plots(report: Report, formats: tuple[str, ...]) -> list[Plot]:
    specs = (
        ("modality_gap", "gap", "Modality gap per category",
         "Textual minus visual alignment accuracy per category and overall, one bar per model; whiskers: 95% "
         "intervals; a stub marked 0 is a gap of zero, 'n/a' a missing one; pale bars rest on few answers.",
         plots.gap_overview, (report.gaps,)),
        ("visual_vs_textual", "per_category", "Visual vs textual alignment per category",
         "Bars: accuracy; whiskers: 95% interval.", plots.visual_vs_textual, (report.systems,)),
        ("perception_vs_alignment", "per_category", "Perception vs visual alignment per category",
         "High perception with low alignment: the model recognises the concept but does not call it unsafe.",
         plots.perception_vs_alignment, (report.systems,)),
        ("gap_per_concept", "per_category", "Modality gap per concept",
         "Textual minus visual accuracy per concept, sorted; right of zero: better in text.",
         plots.gap_per_concept, (report.gaps,)),
        ("post_training", "post_training", "After training",
         "Each model on UnsafeConcepts_TEST (overall, safe and unsafe halves), 1 - Self-BLEU, MME, LLaVA-Bench, "
         "SMID and NSFW, where the runs have them.",
         plots.post_training, (post_training_rows(report.systems), POST_TRAINING_COLUMNS)),
    )
    written = []
    for key, section, title, caption, fn, args in specs:
        try:
            path = plots.draw(fn, *args, stem=report.out / key, formats=formats)
        except Exception as e:  # noqa: BLE001 - a figure that cannot be drawn must not cost the report
            report.notes.append(f"figure {key} could not be drawn ({type(e).__name__}: {e}); the tables have "
                                "its numbers")
            continue
        if path is not None:
            written.append(Plot(key, title, caption, path, section))
    return written


def run_summary_rows(report: Report) -> list[list]:
    rows = []
    for r in report.runs:
        flags = [f for f, on in (("synthetic data", r.synthetic), ("untrained vision tower", r.untrained_vision)) if on]
        rows.append([r.path.name, r.model + (f" + {r.adapter}" if r.adapter else ""), r.task, r.data, r.judge,
                     len(r.rows), r.summary.get("n_error"), r.summary.get("unclear_rate"), ", ".join(flags)])
    return rows


RUN_COLUMNS = ["run folder", "model", "task", "data", "scorer", "rows", "errors", "unclear rate", "warnings"]

INTERVALS_LINE = ("Intervals: 95% Wilson score intervals, answers to one image counted as one cluster; gaps: "
                  "Newcombe's score interval.")


def banners(report: Report) -> list[tuple[str, str]]:
    """(title, text) of the warnings the report opens with."""
    out = []
    if report.synthetic_runs:
        names = ", ".join(r.path.name for r in report.synthetic_runs)
        out.append(("Synthetic data", f"{len(report.synthetic_runs)} run(s) used the offline synthetic sample "
                    f"(placeholder images): {names}. Their numbers only show the pipeline working and say nothing "
                    "about any model."))
    if report.untrained_runs:
        out.append(("Untrained vision tower", "Models marked [untrained vision] (the offline tiny-vlm) have a "
                    "randomly initialised vision tower: their image results say nothing about any real model."))
    return out


def render_markdown(report: Report) -> str:
    from unsafe_concepts.report.reference import PAPER_REFERENCE, PAPER_SOURCE

    lines = ["# UnsafeConcepts report", "", f"Generated {report.created} from {len(report.runs)} run folder(s). "
             f"{INTERVALS_LINE}", ""]
    lines += [f"**{title}.** {text}\n" for title, text in banners(report)]
    if report.problems:
        lines += ["## Run folders not included", ""] + [f"- {p}" for p in report.problems] + [""]

    def section(key):
        return ([to_markdown(t) for t in report.section_tables(key)]
                + [f"![{p.title}]({p.path.name})\n\n{p.caption}\n" for p in report.section_plots(key)])

    lines += ["## Modality gap", ""] + [f"- {m}" for m in report.gap_missing] + [""] + section("gap")
    lines += ["## Perception and alignment per category", ""] + section("per_category")
    lines += ["## After training", ""] + section("post_training")
    if report.section_tables("details"):
        lines += ["## Other tasks", ""] + section("details")
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    runs = Table("runs", "Runs", "", RUN_COLUMNS, run_summary_rows(report))
    lines += ["## Runs", "", markdown_grid(runs)]
    lines += ["## The paper's figures (context, not targets)", "", f"Source: {PAPER_SOURCE}.", ""]
    lines += [f"- {what}: {value}" for what, value in PAPER_REFERENCE]
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict:
    return {
        "created": report.created,
        "intervals": metrics.INTERVAL_METHOD,
        "problems": report.problems,
        "notes": report.notes,
        "gap_missing": report.gap_missing,
        "runs": [{"folder": str(r.path), "system": r.system, "model": r.model, "adapter": r.adapter, "task": r.task,
                  "data": r.data, "judge": r.judge, "synthetic": r.synthetic, "untrained_vision": r.untrained_vision,
                  "summary": r.summary} for r in report.runs],
        "gaps": report.gaps,
        "post_training": [{"model": label, **stats} for label, stats in post_training_rows(report.systems)],
    }


def print_summary(report: Report, stream=None) -> None:
    stream = stream or sys.stdout
    for problem in report.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for title, text in banners(report):
        print(f"warning: {title.lower()}: {text}", file=sys.stderr)
    for system, by_pair in report.gaps.items():
        for name, gap in by_pair.items():
            o = gap["overall"]
            print(f"{system}: modality gap ({name}) {fmt_num(o['value'])} [{fmt_num(o['ci_low'])}, "
                  f"{fmt_num(o['ci_high'])}]", file=stream)
    for message in report.gap_missing:
        print(message, file=stream)
    for run in report.runs:
        o = run.summary.get("overall") or {}
        print(f"{run.system} / {run.task}: {fmt_num(o.get('value'))} [{fmt_num(o.get('ci_low'))}, "
              f"{fmt_num(o.get('ci_high'))}], unclear {fmt_num(run.summary.get('unclear_rate'))}, "
              f"n={run.summary.get('n')}", file=stream)
    print(f"report: {report.html_path} (tables: {report.out}/*.md, *.csv, *.tex; plots: *.png, *.svg, *.pdf)",
          file=stream)
