"""Post-training evaluation (the protocol's ``post_training_evaluation``), given a model spec and an
optional adapter:

- **UnsafeConcepts_TEST**: accuracy overall / on the safe half / on the unsafe half, an unclear
  verdict counted wrong, the unclear rate, and response diversity 1 - Self-BLEU;
- **general capability**: MME (yes/no string match; accuracy, acc+, MME score) and LLaVA-Bench
  (relative score from an LLM judge);
- **generalisation**: SMID and an NSFW set, each image asked the five alignment prompts, accuracy.

Every set writes ``<out>/<set>/responses.jsonl`` as it goes (a rerun skips answered ids, so a killed
run resumes) and ``<out>/<set>/metrics.json``; ``<out>/posteval.json`` collects all metrics with the
configuration. Sets whose source is not given are skipped (nothing downloads unless asked: give
``hf`` as a source to use the hub copy).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from unsafe_concepts.errors import UserError

SETS = ("unsafeconcepts", "mme", "llavabench", "smid", "nsfw")


@dataclass
class PostEvalConfig:
    model: str
    out_dir: str
    adapter: str | None = None
    # sources (None = skip the set)
    unsafeconcepts: str | None = "sample"  # dataset spec for UnsafeConcepts_TEST, or "heldout-text"
    modality: str = "image"  # UnsafeConcepts_TEST modality: image or text
    safe_data: str | None = None
    mme: str | None = None
    llavabench: str | None = None
    smid: str | None = None
    nsfw: str | None = None
    # judges
    judge: str = "classifier"  # response judge for the alignment sets
    llava_judge: str | None = None  # model spec of the LLaVA-Bench judge (required when llavabench is set)
    # generation (protocol: sampling, T=1, top_p=0.9, 512 new tokens)
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 0.9
    greedy: bool = False
    seed: int = 0
    batch_size: int = 8
    limit: int | None = None  # items per set for quick checks (UnsafeConcepts_TEST: a seeded random N, else the first N)
    self_bleu_max_texts: int | None = None
    dtype: str | None = None
    device: str | None = None
    base_url: str | None = None  # for openai: models
    api_key_env: str = "OPENAI_API_KEY"  # the variable's name; the key itself is never stored
    concurrency: int = 8  # parallel requests for openai: models
    text_only: bool = False  # the model cannot see images (see `evaluate --text-only`)

    def validate(self) -> None:
        if self.modality not in ("image", "text"):
            raise UserError(f"modality must be image or text, got {self.modality!r}")
        if self.llavabench and not self.llava_judge:
            raise UserError("LLaVA-Bench needs a judge model: set llava_judge (e.g. openai:gpt-4o or hf:<path>)")
        if not any(getattr(self, name) for name in SETS):
            raise UserError("nothing to evaluate: give at least one set source (unsafeconcepts, mme, llavabench, "
                            "smid, nsfw)")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise UserError("batch_size and max_new_tokens must be >= 1")

    def generation(self):
        from unsafe_concepts.models.base import GenerationConfig

        return GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                do_sample=not self.greedy, seed=self.seed)


# ---------------------------------------------------------------------------- resumable generation
def _read_rows(path: Path) -> dict[str, dict]:
    rows = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill: that query is asked again
                if row.get("response") is not None:
                    rows[row["id"]] = row
    return rows


def generate_rows(backend, queries: Sequence[dict], gen_config, path: Path, *, batch_size: int = 8,
                  desc: str = "generate") -> list[dict]:
    """Answer ``queries`` (dicts with id, prompt, image and any ground-truth fields), appending each
    finished row to ``path``; ids already answered there are not asked again. Returns rows in order."""
    from tqdm.auto import tqdm

    from unsafe_concepts.models.base import Query

    path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_rows(path)
    todo = [q for q in queries if q["id"] not in done]
    with path.open("a", encoding="utf-8") as f, tqdm(total=len(queries), initial=len(queries) - len(todo),
                                                      desc=desc, unit="q") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            # an image may be given as a zero-argument loader: decoded only when its batch is asked
            gens = backend.generate([Query(id=q["id"], prompt=q["prompt"],
                                           image=q["image"]() if callable(q.get("image")) else q.get("image"))
                                     for q in batch], gen_config)
            for q, g in zip(batch, gens):
                row = {k: v for k, v in q.items() if k != "image" or isinstance(v, (str, type(None)))}
                row.update(response=g.text, error=g.error, latency_s=g.latency_s)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                if g.text is not None:
                    done[q["id"]] = row
            f.flush()
            bar.update(len(batch))
    missing = [q["id"] for q in queries if q["id"] not in done]
    if missing:
        print(f"warning: {len(missing)} queries failed (see 'error' in {path}); they count as wrong")
    return [done.get(q["id"], {**{k: v for k, v in q.items() if k != "image"}, "response": None}) for q in queries]


def _write(path: Path, obj: dict) -> None:
    from unsafe_concepts.train.common import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)


# ---------------------------------------------------------------------------- UnsafeConcepts_TEST
def unsafeconcepts_queries(source: str, modality: str, *, safe: str | None = None, supports_images: bool = True,
                           seed: int = 2024) -> list[dict]:
    """The test queries: the registered ``unsafeconcepts_test`` / ``unsafeconcepts_test_text`` task on
    a dataset, or ``heldout-text`` (the concept-held-out text experiment of ``train.data``)."""
    if source == "heldout-text":
        from unsafe_concepts.train.data import heldout_text_items

        return [{"id": it.id, "prompt": it.prompt, "image": None, "label": it.label, "concept": it.concept,
                 "category": it.category, "prompt_index": it.prompt_index}
                for it in heldout_text_items("test", seed=seed)]
    from unsafe_concepts.tasks import BLANK, TaskOptions, get_task

    task = get_task("unsafeconcepts_test" if modality == "image" else "unsafeconcepts_test_text")
    samples = task.build(task.load_data(source, safe), TaskOptions(seed=seed))
    blank = None
    if supports_images and any(s.image == BLANK for s in samples):
        from unsafe_concepts.data import blank_image

        blank = blank_image()
    return [{"id": s.id, "prompt": s.prompt, "image": blank if s.image == BLANK else s.image, "label": s.label,
             "concept": s.concept, "category": s.category, "prompt_index": s.prompt_index} for s in samples]


def judge_rows(judge, rows: list[dict], task: str) -> list[str]:
    """Verdict labels of ``rows`` (a failed generation is ``unclear``: counted wrong)."""
    from unsafe_concepts.judges.base import JudgeItem

    answered = [r for r in rows if r.get("response") is not None]
    verdicts = judge.judge([JudgeItem(task=task, prompt=r["prompt"], response=r["response"]) for r in answered])
    by_id = {r["id"]: v.label for r, v in zip(answered, verdicts)}
    return [by_id.get(r["id"], "unclear") for r in rows]


def alignment_metrics(rows: list[dict], verdicts: list[str], *, set_name: str,
                      self_bleu_max_texts: int | None = None) -> dict:
    from unsafe_concepts.evalsets import score_alignment, self_bleu

    metrics = score_alignment([r["label"] for r in rows], verdicts, set_name=set_name)
    metrics["diversity"] = self_bleu([r.get("response") or "" for r in rows], max_texts=self_bleu_max_texts)
    metrics["one_minus_self_bleu"] = metrics["diversity"]["one_minus_self_bleu"]
    return metrics


def eval_alignment_queries(backend, judge, queries: list[dict], out: Path, config: PostEvalConfig, *,
                           set_name: str, task: str) -> dict:
    rows = generate_rows(backend, queries, config.generation(), out / "responses.jsonl",
                         batch_size=config.batch_size, desc=set_name)
    verdicts = judge_rows(judge, rows, task)
    _write_verdicts(out / "verdicts.jsonl", rows, verdicts)
    metrics = alignment_metrics(rows, verdicts, set_name=set_name, self_bleu_max_texts=config.self_bleu_max_texts)
    _write(out / "metrics.json", metrics)
    return metrics


def _write_verdicts(path: Path, rows: list[dict], verdicts: list[str]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r, v in zip(rows, verdicts):
            f.write(json.dumps({"id": r["id"], "label": r.get("label"), "verdict": v}) + "\n")


# ---------------------------------------------------------------------------- general capability
def eval_mme(backend, items, out: Path, config: PostEvalConfig) -> dict:
    from unsafe_concepts.evalsets import score_mme

    queries = [{"id": it.id, "prompt": it.question, "image": it.load_image, "category": it.category,
                "answer": it.answer} for it in items]
    rows = generate_rows(backend, queries, config.generation(), out / "responses.jsonl",
                         batch_size=config.batch_size, desc="mme")
    metrics = score_mme(items, [r.get("response") for r in rows])
    _write(out / "metrics.json", metrics)
    return metrics


def eval_llavabench(backend, items, judge_model, out: Path, config: PostEvalConfig) -> dict:
    from unsafe_concepts.evalsets import judge_llavabench, score_llavabench

    queries = [{"id": it.id, "prompt": it.question, "image": it.load_image, "category": it.category}
               for it in items]
    rows = generate_rows(backend, queries, config.generation(), out / "responses.jsonl",
                         batch_size=config.batch_size, desc="llavabench")
    reviews = judge_llavabench(items, [r.get("response") for r in rows], judge_model)
    with (out / "reviews.jsonl").open("w", encoding="utf-8") as f:
        for it, rev in zip(items, reviews):
            f.write(json.dumps({"id": it.id, "review": rev}, ensure_ascii=False) + "\n")
    metrics = score_llavabench(items, reviews)
    _write(out / "metrics.json", metrics)
    return metrics


def eval_labelled_images(backend, judge, items, out: Path, config: PostEvalConfig, *, set_name: str) -> dict:
    from unsafe_concepts.evalsets import alignment_queries

    queries = [{"id": q["id"], "prompt": q["prompt"], "image": q["item"].image, "label": q["item"].label,
                "prompt_index": q["prompt_index"]} for q in alignment_queries(items)]
    return eval_alignment_queries(backend, judge, queries, out, config, set_name=set_name, task="alignment")


# ---------------------------------------------------------------------------- all together
def run_posteval(config: PostEvalConfig, *, backend=None, judge=None, llava_judge=None) -> dict:
    """Evaluate every set whose source is given; returns (and writes) ``posteval.json``."""
    config.validate()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if backend is None:
        from unsafe_concepts.models.registry import load_model

        backend = load_model(config.model, adapter=config.adapter, dtype=config.dtype, device=config.device,
                             base_url=config.base_url, api_key_env=config.api_key_env,
                             concurrency=config.concurrency, text_only=config.text_only)
    needs_judge = config.unsafeconcepts or config.smid or config.nsfw
    if judge is None and needs_judge:
        from unsafe_concepts.judges import load_judge

        judge = load_judge(config.judge)
    lim = config.limit
    results: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], dict]]] = []
    if config.unsafeconcepts:
        def _uc():
            queries = unsafeconcepts_queries(config.unsafeconcepts, config.modality, safe=config.safe_data,
                                             supports_images=getattr(backend, "supports_images", True))
            task = "alignment_text_only" if config.modality == "text" or config.unsafeconcepts == "heldout-text" \
                else "alignment"
            if lim:  # a seeded random subset: the task lists all unsafe items before the safe ones
                import random

                queries = random.Random(config.seed).sample(queries, min(lim, len(queries)))
            return eval_alignment_queries(backend, judge, queries, out / "unsafeconcepts",
                                          config, set_name="unsafeconcepts_test", task=task)
        steps.append(("unsafeconcepts_test", _uc))
    if config.mme:
        from unsafe_concepts.evalsets import load_mme

        steps.append(("mme", lambda: eval_mme(backend, load_mme(config.mme, limit=lim), out / "mme", config)))
    if config.llavabench:
        from unsafe_concepts.evalsets import load_llavabench

        def _llava():
            jm = llava_judge
            if jm is None:
                from unsafe_concepts.models.registry import load_model

                jm = load_model(config.llava_judge, api_key_env=config.api_key_env)
            return eval_llavabench(backend, load_llavabench(config.llavabench, limit=lim), jm, out / "llavabench",
                                   config)
        steps.append(("llavabench", _llava))
    if config.smid:
        from unsafe_concepts.evalsets import load_smid

        steps.append(("smid", lambda: eval_labelled_images(backend, judge, load_smid(config.smid, limit=lim),
                                                           out / "smid", config, set_name="smid")))
    if config.nsfw:
        from unsafe_concepts.evalsets import load_nsfw

        steps.append(("nsfw", lambda: eval_labelled_images(backend, judge, load_nsfw(config.nsfw, limit=lim),
                                                           out / "nsfw", config, set_name="nsfw")))
    if not steps:
        raise UserError("nothing to evaluate: give at least one set source (unsafeconcepts, mme, llavabench, smid, nsfw)")
    for name, step in steps:
        results[name] = step()
    record = {"config": asdict(config), "model": backend.describe() if hasattr(backend, "describe") else None,
              "judge": judge.describe() if judge is not None else None, "results": results}
    _write(out / "posteval.json", record)
    return record


def cli_posteval(args) -> int:
    """``unsafe-concepts posteval``: the argparse namespace carries PostEvalConfig's field names
    (``--out`` -> out_dir; ``--unsafeconcepts none`` skips that set)."""
    fields = PostEvalConfig.__dataclass_fields__
    values = {k: getattr(args, k) for k in fields if getattr(args, k, None) is not None}
    values["out_dir"] = args.out
    if str(values.get("unsafeconcepts", "")).lower() == "none":
        values["unsafeconcepts"] = None
    record = run_posteval(PostEvalConfig(**values))
    print(json.dumps({k: _headline(v) for k, v in record["results"].items()}, indent=2))
    return 0


def _headline(m: dict) -> dict:
    keys = ("n", "accuracy", "safe_accuracy", "unsafe_accuracy", "unclear_rate", "one_minus_self_bleu",
            "total_score", "relative_score", "n_unparsed")
    return {k: m[k] for k in keys if k in m}
