"""Markdown table of the baseline evidence recorded before evaluation moved to the one runner
(scripts/train_evidence/results/baselines/eval_*.json;
the base row falls back to the PPO evidence's eval_base.json, made by the same command)."""
import json
from pathlib import Path

R = Path(__file__).parent / "results"


def load(name):
    for p in (R / "baselines" / f"eval_{name}.json", R / "ppo" / f"eval_{name}.json"):
        if p.exists():
            return json.loads(p.read_text()), p
    return None, None


print("| model | overall [95% CI] | safe | unsafe | unclear | classifier judge: overall / unclear | 1 - Self-BLEU | mean words | general yes/no | perplexity | source |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for name in ("base", "sft", "dpo", "grpo", "ppo"):
    d, p = load(name)
    if d is None:
        continue
    j = d["judges"]["rule"]
    g = d.get("general", {})
    lo, hi = j["overall_ci"]
    c = d["judges"].get("classifier")
    cls = f"{c['overall']:.3f} / {c['unclear_rate']:.3f}" if c else "-"
    print(f"| {name} | {j['overall']:.3f} [{lo:.3f}, {hi:.3f}] | {j['safe']:.3f} | {j['unsafe']:.3f} | "
          f"{j['unclear_rate']:.3f} | {cls} | {d['diversity']['one_minus_self_bleu']:.3f} | {d['mean_words']:.1f} | "
          f"{g.get('yes_no_accuracy', float('nan')):.3f} | {g.get('perplexity', float('nan')):.1f} | "
          f"{p.relative_to(R.parent.parent.parent)} |")
