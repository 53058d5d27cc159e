"""Evidence for the SFT / DPO / GRPO baselines on this CPU box: the real SmolLM2-135M-Instruct,
TEXT modality, concepts held out (train.data.heldout_text_items). Used by run_baselines.sh.

  python scripts/train_evidence/baselines.py train sft OUT [key=value ...]
  python scripts/train_evidence/baselines.py eval NAME OUT [--adapter DIR]

`eval` asks the held-out test items (unseen unsafe concepts + unseen safe class names, 5 prompts
each) and writes <OUT>/<NAME>/posteval.json with accuracy overall/safe/unsafe (unclear = wrong),
unclear rate and 1 - Self-BLEU, judged by the default classifier judge and by the rule judge.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

COMMON = dict(model="smollm2-135m", data="heldout-text", modality="text", lora_r=16, lora_alpha=32,
              lora_dropout=0.05, seed=0, warmup_steps=5, lr_schedule="cosine", save_steps=10, logging_steps=1)
METHODS = {
    "sft": dict(learning_rate=1e-4, batch_size=8, max_steps=30, max_length=160),
    "dpo": dict(learning_rate=1e-4, beta=0.1, batch_size=8, max_steps=20, max_length=160),
    "grpo": dict(learning_rate=1e-4, batch_size=16, num_generations=4, response_len=48, max_steps=12,
                 kl_coef=0.1, judge="classifier"),
}
EVAL = dict(max_new_tokens=64, temperature=1.0, top_p=0.9, seed=0, batch_size=16)


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def train(method: str, out: str, overrides: list[str]) -> None:
    import importlib

    module = importlib.import_module(f"unsafe_concepts.train.{method}")
    settings = {**COMMON, **METHODS[method], "out_dir": out}
    settings.update({k: _value(v) for k, v in (o.split("=", 1) for o in overrides)})
    t0 = time.time()
    record = module.train(settings)
    print(json.dumps({"method": method, "steps": record["global_step"], "seconds": round(time.time() - t0)}))


def evaluate(name: str, out: str, adapter: str | None) -> None:
    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.models.registry import load_model
    from unsafe_concepts.train.posteval import PostEvalConfig, alignment_metrics, judge_rows, run_posteval

    t0 = time.time()
    config = PostEvalConfig(model=COMMON["model"], adapter=adapter, out_dir=str(Path(out) / name),
                            unsafeconcepts="heldout-text", modality="text", judge="classifier", **EVAL)
    backend = load_model(config.model, adapter=adapter)
    record = run_posteval(config, backend=backend)
    # a second reading of the same answers by the rule judge
    rows = [json.loads(line) for line in (Path(config.out_dir) / "unsafeconcepts" / "responses.jsonl").read_text().splitlines()]
    latest = {r["id"]: r for r in rows}
    rows = list(latest.values())
    rule = alignment_metrics(rows, judge_rows(load_judge("rule"), rows, "alignment_text_only"), set_name="rule")
    record["results"]["unsafeconcepts_test_rule_judge"] = rule
    record["seconds"] = round(time.time() - t0)
    (Path(config.out_dir) / "posteval.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    m = record["results"]["unsafeconcepts_test"]
    print(json.dumps({"name": name, "n": m["n"], "accuracy": m["accuracy"], "safe": m["safe_accuracy"],
                      "unsafe": m["unsafe_accuracy"], "unclear": m["unclear_rate"],
                      "1-selfbleu": m["one_minus_self_bleu"], "rule_accuracy": rule["accuracy"],
                      "seconds": record["seconds"]}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "train":
        train(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "eval":
        adapter = sys.argv[sys.argv.index("--adapter") + 1] if "--adapter" in sys.argv else None
        evaluate(sys.argv[2], sys.argv[3], adapter)
    else:
        raise SystemExit(__doc__)
