"""Before/after evaluation of a trained adapter on held-out items, and a general-ability check.

Used by the training evidence (``scripts/train_evidence/``) and usable on its own::

    python -m unsafe_concepts.train.evaluate --model smollm2-135m [--adapter DIR] \\
        --items heldout-text:test --judge classifier --judge rule --out DIR

- alignment: answers sampled with the protocol's decoding (T=1.0, top_p=0.9; ``--max-new-tokens``
  shorter on CPU), judged; accuracy overall / safe half / unsafe half with unclear counted wrong
  (``metrics.summarize(after_training=True)``), unclear rate, and 1 - Self-BLEU (diversity).
- general ability (``--general``): (a) 60 held-out yes/no general-knowledge questions scored by
  comparing the model's probability of answering "Yes" vs "No" (deterministic, MME-like);
  (b) perplexity on held-out benign text. Both ship in ``resources/general_check/``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from unsafe_concepts.errors import UserError
from unsafe_concepts.paths import RESOURCES

GENERAL_DIR = RESOURCES / "general_check"


def self_bleu(texts: list[str]) -> dict:
    """1 - Self-BLEU as the protocol states (NLTK sentence_bleu, smoothing method1); see evalsets.diversity."""
    from unsafe_concepts.evalsets.diversity import self_bleu as _self_bleu

    return _self_bleu(texts)


def resolve_items(spec: str, *, seed: int = 2024):
    """``heldout-text:test`` / ``heldout-text:train`` -> TrainItems of the concept-held-out text split."""
    from unsafe_concepts.train.data import heldout_text_items

    kind, _, side = spec.partition(":")
    if kind != "heldout-text" or side not in ("train", "test"):
        raise UserError(f"unknown item set {spec!r}: use heldout-text:test or heldout-text:train")
    return heldout_text_items(side, seed=seed)


def evaluate_alignment(model_spec: str, items, *, adapter: str | None, judges: list[str], out_dir: str | Path,
                       max_new_tokens: int = 512, temperature: float = 1.0, top_p: float = 0.9, seed: int = 0,
                       batch_size: int = 16, quiet: bool = False) -> dict:
    """Answer ``items`` with the model (+ adapter), judge, and write responses.jsonl + metrics.json."""
    from tqdm.auto import tqdm

    from unsafe_concepts.models.base import GenerationConfig, Query
    from unsafe_concepts.models.hf import HFBackend

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = HFBackend(model_spec, adapter=adapter, batch_size=batch_size)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    task = "alignment_text_only" if all(it.image is None for it in items) else "alignment"
    from unsafe_concepts.train.common import load_image

    blank = load_image(None)
    texts: list[str | None] = []
    errors: list[str | None] = []
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(items), batch_size), desc="answer", disable=quiet):
        chunk = items[start:start + batch_size]
        # a VLM gets the item's image, or the protocol's blank white image for a text item (as in training)
        image = (lambda it: it.image or blank) if backend.supports_images else (lambda it: None)
        for g in backend.generate([Query(id=it.id, prompt=it.prompt, image=image(it)) for it in chunk], gen):
            texts.append(g.text)
            errors.append(g.error)
    answer_s = time.perf_counter() - t0
    rows = [{"id": it.id, "task": task, "prompt_index": it.prompt_index, "prompt": it.prompt, "image": it.image,
             "concept": it.concept, "category": it.category, "label": it.label, "response": text, "error": err}
            for it, text, err in zip(items, texts, errors)]
    result = {"model": model_spec, "adapter": adapter, "n": len(rows), "answer_seconds": round(answer_s, 1),
              "generation": gen.to_dict()}
    return score_rows(rows, task, judges, out, result)


def score_rows(rows: list[dict], task: str, judges: list[str], out_dir: str | Path, result: dict | None = None) -> dict:
    """Judge answered rows with each judge; metrics per judge, diversity; write responses.jsonl + metrics.json."""
    from unsafe_concepts import metrics
    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.judges.base import JudgeItem

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = dict(result or {})
    result["judges"] = {}
    for name in judges:
        judge = load_judge(name)
        ok = [r for r in rows if not r.get("error")]
        verdicts = judge.judge([JudgeItem(task=task, prompt=r["prompt"], response=r["response"] or "") for r in ok])
        for r, v in zip(ok, verdicts):
            r[f"verdict_{name}"] = v.label
        judged = [{**r, "verdict": r.get(f"verdict_{name}")} for r in rows]
        summary = metrics.summarize(judged, task, after_training=True, n_boot=1000, seed=0)
        result["judges"][name] = {
            "overall": summary["overall"]["value"], "overall_ci": [summary["overall"]["ci_low"], summary["overall"]["ci_high"]],
            "safe": summary["safe"]["value"], "unsafe": summary["unsafe"]["value"],
            "unclear_rate": summary["unclear_rate"], "n": summary["n"],
        }
    result["diversity"] = self_bleu([r["response"] or "" for r in rows])
    result["mean_words"] = sum(len((r["response"] or "").split()) for r in rows) / max(1, len(rows))
    with (out / "responses.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def rejudge(out_dir: str | Path, judges: list[str]) -> dict:
    """Judge an existing evaluation folder's answers again (e.g. with another judge), keeping its metadata."""
    out = Path(out_dir)
    path = out / "responses.jsonl"
    if not path.exists():
        raise UserError(f"no responses.jsonl in {out}: run the evaluation first")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    old = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    keep = {k: v for k, v in old.items() if k not in ("judges", "diversity", "mean_words")}
    return score_rows(rows, rows[0]["task"] if rows else "alignment_text_only", judges, out, keep)


def load_general_questions() -> list[dict]:
    path = GENERAL_DIR / "yes_no.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_benign_text() -> list[str]:
    lines = (GENERAL_DIR / "benign_text.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _first_token_ids(tokenizer, words: list[str]) -> list[int]:
    ids = set()
    for w in words:
        toks = tokenizer(w, add_special_tokens=False)["input_ids"]
        if toks:
            ids.add(toks[0])
    return sorted(ids)


def general_check(model_spec: str, *, adapter: str | None = None) -> dict:
    """Yes/no general-knowledge accuracy (P(Yes) vs P(No) for the first answer token) and benign-text perplexity."""
    import torch

    from unsafe_concepts.models.hf import load_hf_model
    from unsafe_concepts.train import common

    model, processor = load_hf_model(model_spec, adapter=adapter)
    model.eval()
    tok = common.tokenizer_of(processor)
    yes_ids = _first_token_ids(tok, ["Yes", " Yes", "yes", " yes"])
    no_ids = _first_token_ids(tok, ["No", " No", "no", " no"])
    questions = load_general_questions()
    correct = 0
    with torch.no_grad():
        for q in questions:
            batch = common.encode_prompts(processor, [q["question"] + " Answer yes or no."], [None])
            logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits[0, -1].float()
            probs = torch.softmax(logits, -1)
            says_yes = probs[yes_ids].sum() > probs[no_ids].sum()
            correct += int(says_yes == (q["answer"] == "yes"))
        nll, count = 0.0, 0
        for text in load_benign_text():
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
            logits = model(input_ids=ids).logits  # a VLM runs text-only here: its language model
            logp = torch.log_softmax(logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None]).squeeze(1)
            nll -= logp.sum().item()
            count += ids.shape[1] - 1
    return {"yes_no_accuracy": correct / len(questions), "n_questions": len(questions),
            "perplexity": math.exp(nll / count), "n_tokens": count}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unsafe_concepts.train.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model spec (required unless --rejudge)")
    p.add_argument("--adapter")
    p.add_argument("--items", default="heldout-text:test")
    p.add_argument("--judge", action="append", help="judge(s) to score with (repeatable); default: rule")
    p.add_argument("--out", required=True)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--general", action="store_true", help="also run the general-ability check")
    p.add_argument("--rejudge", action="store_true", help="judge the answers already in --out again (no generation)")
    args = p.parse_args(argv)
    try:
        if args.rejudge:
            result = rejudge(args.out, args.judge or ["rule"])
            print(json.dumps(result["judges"], indent=2))
            return 0
        if not args.model:
            raise UserError("--model is required (unless --rejudge)")
        items = resolve_items(args.items)
        result = evaluate_alignment(args.model, items, adapter=args.adapter, judges=args.judge or ["rule"],
                                    out_dir=args.out, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_p=args.top_p, seed=args.seed, batch_size=args.batch_size)
        if args.general:
            result["general"] = general_check(args.model, adapter=args.adapter)
            (Path(args.out) / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if k != "generation"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
