"""Print the before/after table of the PPO evidence from the result files recorded before evaluation moved to
the one runner (results/ppo/eval_*.json, format of the removed train/evaluate.py). New runs: `unsafe-concepts report`."""
import json
import sys
from pathlib import Path

RESULTS = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "ppo")


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def main() -> int:
    base = json.loads((RESULTS / "eval_base.json").read_text())
    after = json.loads((RESULTS / "eval_ppo.json").read_text())
    print("| judge | model | accuracy overall [95% CI] | safe half | unsafe half | unclear rate | 1 - Self-BLEU | mean words |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for judge in base["judges"]:
        for name, res in (("base", base), ("PPO", after)):
            j = res["judges"].get(judge)
            if not j:
                continue
            lo, hi = j["overall_ci"]
            print(f"| {judge} | {name} | {pct(j['overall'])} [{pct(lo)}, {pct(hi)}] | {pct(j['safe'])} | {pct(j['unsafe'])} | "
                  f"{pct(j['unclear_rate'])} | {res['diversity']['one_minus_self_bleu']:.3f} | {res['mean_words']:.1f} |")
    print()
    print("| general ability | base | PPO | change |")
    print("| --- | --- | --- | --- |")
    gb, ga = base.get("general", {}), after.get("general", {})
    if gb and ga:
        print(f"| yes/no questions (60), accuracy | {pct(gb['yes_no_accuracy'])} | {pct(ga['yes_no_accuracy'])} | "
              f"{100 * (ga['yes_no_accuracy'] - gb['yes_no_accuracy']):+.1f} points |")
        print(f"| benign-text perplexity ({gb['n_tokens']} tokens) | {gb['perplexity']:.2f} | {ga['perplexity']:.2f} | "
              f"{100 * (ga['perplexity'] / gb['perplexity'] - 1):+.1f}% |")
    log = RESULTS / "train_log.jsonl"
    if log.exists():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        secs = sum(r["step_s"] for r in rows)
        print(f"\ntraining: {len(rows)} steps, {secs / 60:.1f} min of step time (wall), "
              f"last-5-step train accuracy {sum(r['accuracy'] for r in rows[-5:]) / min(5, len(rows)):.3f}, "
              f"first-5 {sum(r['accuracy'] for r in rows[:5]) / min(5, len(rows)):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
