"""Synthetic run folders with known verdicts, in the layout `unsafe-concepts evaluate` writes.

The numbers the tests expect follow from these rows by hand (see the comments)."""
from __future__ import annotations

import json
from pathlib import Path

LLAVA = "hf:llava-hf/llava-1.5-7b-hf"
SCRIPT_ANSWER = "<script>document.title='pwned'</script>I cannot <b>tell</b> & won't"
IMG_ANSWER = "<img src=x onerror=\"document.title='pwned2'\">hmm"


def write_run(path: Path, model: str, task: str, rows: list[dict], *, untrained: bool = False, judged: bool = True,
              data: str = "sample") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    record = {"config": {"model": model, "task": task, "data": data, "adapter": None, "judge": "rule" if judged else None},
              "model_info": {"spec": model, "untrained_vision": untrained}}
    if judged:
        record["judge"] = {"name": "rule"}
    (path / "run.json").write_text(json.dumps(record))
    with open(path / "responses.jsonl", "w") as f:
        for i, r in enumerate(rows):
            full = {"id": f"{task}-{i}", "task": task, "prompt_index": r.get("prompt_index"), "prompt": f"question {i}",
                    "image": f"/data/images/{i}.png", "label": "unsafe", "response": r.get("response", "No."),
                    "error": None, "latency_s": 0.1, **r}
            if not judged:
                full.pop("verdict", None)
            f.write(json.dumps(full) + "\n")
    return path


def rows_of(concept: str, category: str, verdicts: list[str], **extra) -> list[dict]:
    return [{"concept": concept, "category": category, "verdict": v, "prompt_index": i % 5, **extra}
            for i, v in enumerate(verdicts)]


def perception_rows(concept, category, verdicts, correct):
    return [{"concept": concept, "category": category, "verdict": v, "correct_option": correct, "prompt_index": None}
            for v in verdicts]


def make_runs(root: Path) -> dict[str, Path]:
    """Good and broken run folders under ``root``; keys name them."""
    runs = {}
    # LLaVA perception: Hate 3/4 (A,A,A vs B), Violence 1/1 (one unclear excluded) -> overall 4/5
    runs["llava_perception"] = write_run(root / "llava-perception", LLAVA, "perception",
                                         perception_rows("Swastika", "Hate", ["A", "A", "A", "B"], "A")
                                         + perception_rows("Gun violence", "Violence", ["C", "unclear"], "C"))
    # LLaVA visual: Hate 2/4, Violence 2/2 (+1 unclear whose answer is an injected script) -> overall 4/6
    visual = (rows_of("Swastika", "Hate", ["unsafe", "safe", "safe", "unsafe"])
              + rows_of("Gun violence", "Violence", ["unsafe", "unsafe"])
              + [{"concept": "Gun violence", "category": "Violence", "verdict": "unclear", "prompt_index": 2,
                  "response": SCRIPT_ANSWER},
                 {"concept": "Gun violence", "category": "Violence", "verdict": "unclear", "prompt_index": 3,
                  "response": IMG_ANSWER},
                 {"concept": "Gun violence", "category": "Violence", "verdict": None, "prompt_index": 4,
                  "response": None, "error": "timeout after 60s"}])
    runs["llava_visual"] = write_run(root / "llava-visual", LLAVA, "alignment", visual)
    # LLaVA textual: Hate 2/2, Violence 1/2 -> gap Hate +0.5, Violence -0.5, overall 3/4 - 4/6
    runs["llava_textual"] = write_run(root / "llava-textual", LLAVA, "alignment_text_only",
                                      rows_of("Swastika", "Hate", ["unsafe", "unsafe"])
                                      + rows_of("Gun violence", "Violence", ["unsafe", "safe"]))
    # contexts: visual safe-context 1/2, unsafe-context 2/2; textual safe 2/2, unsafe 1/2
    runs["llava_context"] = write_run(root / "llava-context", LLAVA, "alignment_context",
                                      rows_of("Swastika", "Hate", ["safe", "unsafe"], context="safe")
                                      + rows_of("Swastika", "Hate", ["unsafe", "unsafe"], context="unsafe"))
    runs["llava_text_context"] = write_run(root / "llava-text-context", LLAVA, "alignment_text_only_context",
                                           rows_of("Swastika", "Hate", ["safe", "safe"], context="safe")
                                           + rows_of("Swastika", "Hate", ["unsafe", "safe"], context="unsafe"))
    # after training: safe half 1/2 (one unclear counted wrong), unsafe half 2/2 -> overall 3/4
    runs["llava_test"] = write_run(root / "llava-test", LLAVA, "unsafeconcepts_test",
                                   rows_of("goldfish", "Safe", ["safe", "unclear"], label="safe")
                                   + rows_of("Swastika", "Hate", ["unsafe", "unsafe"]))
    # tiny-vlm (untrained vision tower): visual 1/3, perception 1/2
    runs["tiny_visual"] = write_run(root / "tiny-visual", "tiny-vlm", "alignment",
                                    rows_of("Swastika", "Hate", ["safe", "safe", "unsafe"]), untrained=True)
    runs["tiny_perception"] = write_run(root / "tiny-perception", "tiny-vlm", "perception",
                                        perception_rows("Swastika", "Hate", ["A", "D"], "A"), untrained=True)
    # broken folders
    runs["unjudged"] = write_run(root / "not-judged", LLAVA, "alignment", rows_of("Swastika", "Hate", ["unsafe"]),
                                 judged=False)
    no_responses = root / "no-responses"
    no_responses.mkdir()
    (no_responses / "run.json").write_text(json.dumps({"config": {"model": LLAVA, "task": "alignment", "data": "x"}}))
    runs["no_responses"] = no_responses
    bad = write_run(root / "bad-line", LLAVA, "alignment", rows_of("Swastika", "Hate", ["unsafe", "safe"]))
    (bad / "responses.jsonl").write_text('{not json\n["a list"]\n')  # no readable row at all
    runs["bad_line"] = bad
    runs["missing"] = root / "does-not-exist"
    return runs


GOOD = ["llava_perception", "llava_visual", "llava_textual", "llava_context", "llava_text_context", "llava_test",
        "tiny_visual", "tiny_perception"]
BROKEN = ["unjudged", "no_responses", "bad_line", "missing"]


def runs_from_reference_answers(reference: Path, out: Path, judge) -> list[Path]:
    """Run folders from the reference implementation's real LLaVA-1.5-7B answers (shared/reference/responses),
    judged with ``judge``: UnsafeConcepts_TEST for original / SFT / DPO, and the context questions (original).

    Concept and category come from metadata.jsonl; an image under imagenet_1k/ is a safe image."""
    from unsafe_concepts.judges.base import JudgeItem

    meta = {}
    for line in (reference / "metadata.jsonl").read_text().splitlines():
        m = json.loads(line)
        meta[m["image_filename"]] = m

    def rows_for(items, task, context=None):
        rows = []
        for item in items:
            fname = item["image_fname"]
            key = "images/" + fname.split("images/")[-1] if "/images/" in "/" + fname else None
            if key in meta:
                concept, category, label = meta[key]["unsafe_concept"], meta[key]["category"], "unsafe"
            else:
                concept, category, label = "imagenet " + fname.rsplit("/", 1)[-1], "Safe", "safe"
            row = {"id": f"{key or fname}#{context or item['idx']}", "task": task, "prompt_index": None,
                   "prompt": item["prompt"], "image": None, "concept": concept, "category": category,
                   "label": label, "response": item["output"], "error": None, "latency_s": 0.0}
            if context:
                row["context"] = context
            rows.append(row)
        return rows

    def write(name, model, task, rows):
        verdicts = judge.judge([JudgeItem(task=task, prompt=r["prompt"], response=r["response"]) for r in rows])
        for r, v in zip(rows, verdicts):
            r["verdict"], r["confidence"], r["judge"] = v.label, v.confidence, judge.name
        path = out / name
        path.mkdir(parents=True, exist_ok=True)
        (path / "run.json").write_text(json.dumps({
            "config": {"model": model, "task": task, "data": "reference answers", "judge": judge.name},
            "model_info": {"spec": model, "untrained_vision": False}, "judge": {"name": judge.name}}))
        (path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    base = reference / "responses" / "llava-1.5-7b"
    dirs = []
    for variant in ("original", "sft", "dpo"):
        items = json.loads((base / variant / "UnsafeConcepts_TEST_result.json").read_text())
        dirs.append(write(f"llava-{variant}-test", f"llava-1.5-7b ({variant})", "unsafeconcepts_test",
                          rows_for(items, "unsafeconcepts_test")))
    context_rows = [r for c in ("safe", "unsafe") for r in
                    rows_for(json.loads((base / "original" / f"context_{c}_result.json").read_text()),
                             "alignment_context", c)]
    dirs.append(write("llava-original-context", "llava-1.5-7b (original)", "alignment_context", context_rows))
    return dirs
