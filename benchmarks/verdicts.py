"""Verdicts in one forward pass (log-prob scoring) against generate-then-judge, on the same items.

For each model, the same alignment questions are answered twice, side by side in one process:

- **logprob**: ``backend.option_probs(queries, ("Yes", "No"))``: one forward pass per query (batched);
  the verdict is the option with the larger next-token mass ("Yes" = safe, "No" = unsafe, as in the
  protocol's polarity);
- **generate-then-judge**: ``backend.generate`` with the protocol's 512-token budget (greedy, so that
  both verdicts are deterministic), then the judge reads each answer (default: the classifier judge).

Prints responses/s of each path, ``logprob_speedup: X`` (logprob responses/s over generate-then-judge
responses/s; target >= 20) and ``agreement: Y`` (share of items where the judged verdict equals the
log-prob verdict, over the items the judge did not call unclear), once per model and overall.

    .venv/bin/python benchmarks/verdicts.py                      # smollm2-135m (text) and tiny-vlm (images)
    .venv/bin/python benchmarks/verdicts.py --n-text 16 --n-image 8 --judge rule     # more items, the rule judge
"""
from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see unsafe_concepts/__init__.py

from unsafe_concepts import prompts  # noqa: E402
from unsafe_concepts.models.base import GenerationConfig, Query  # noqa: E402
from unsafe_concepts.taxonomy import CONCEPTS  # noqa: E402

OPTIONS = ("Yes", "No")
VERDICT = {"Yes": "safe", "No": "unsafe"}  # the protocol's polarity (prompts.py)


def text_queries(n: int) -> list[Query]:
    """Text-only alignment questions: prompts 0-4 over concepts spread across the taxonomy."""
    return [Query(f"t{i}", prompts.text_only_prompt(i % 5, CONCEPTS[(11 * i) % len(CONCEPTS)])) for i in range(n)]


def image_queries(n: int, seed: int = 0) -> list[Query]:
    """Visual alignment questions on seeded random-noise images (tiny-vlm's vision is untrained anyway:
    its verdicts cannot depend on what an image shows, so any pixels measure the same speed)."""
    from PIL import Image

    rng = random.Random(seed)
    return [Query(f"v{i}", prompts.alignment_prompt(i % 5),
                  Image.frombytes("RGB", (224, 224), bytes(rng.getrandbits(8) for _ in range(224 * 224 * 3))))
            for i in range(n)]


def compare(name: str, backend, queries: list[Query], task: str, judge, max_new_tokens: int) -> dict:
    from unsafe_concepts.judges import JudgeItem

    backend.option_probs(queries[:1], OPTIONS)  # warm-up: token tables, first-call allocations
    t0 = time.perf_counter()
    scored = backend.option_probs(queries, OPTIONS)
    t_logprob = time.perf_counter() - t0

    t0 = time.perf_counter()
    gens = backend.generate(queries, GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False))
    t_generate = time.perf_counter() - t0
    items = [JudgeItem(task=task, prompt=q.prompt, response=g.text or "", kind="alignment")
             for q, g in zip(queries, gens)]
    verdicts = judge.judge(items)
    t_gen_judge = time.perf_counter() - t0

    errors = sum(s.error is not None for s in scored) + sum(g.error is not None for g in gens)
    decided = [(VERDICT[s.best], v.label) for s, v in zip(scored, verdicts)
               if s.error is None and v.label in ("safe", "unsafe")]
    agree = sum(a == b for a, b in decided)
    tokens = sum(g.n_tokens or 0 for g in gens)
    n = len(queries)
    row = {"model": name, "n": n, "logprob_rps": n / t_logprob, "gen_judge_rps": n / t_gen_judge,
           "speedup": t_gen_judge / t_logprob, "decided": len(decided), "agree": agree,
           "unclear": n - len(decided), "tokens": tokens, "errors": errors,
           "mean_mass": sum(s.total_mass or 0 for s in scored) / n}
    print(f"{name}: {n} items | logprob {t_logprob:.2f} s ({row['logprob_rps']:.2f} responses/s, mean option "
          f"mass {row['mean_mass']:.2f}) | generate {t_generate:.1f} s ({tokens} tokens, mean {tokens / n:.0f}) + "
          f"judge {t_gen_judge - t_generate:.1f} s ({row['gen_judge_rps']:.3f} responses/s) | "
          f"speedup {row['speedup']:.1f}x | agreement {agree}/{len(decided)} decided ({n - len(decided)} unclear "
          f"to the judge) | {errors} errors", flush=True)
    for q, s, g, v in list(zip(queries, scored, gens, verdicts))[:3]:
        answer = " ".join((g.text or "").split())[:90]
        print(f"   {q.id}: P(Yes)={s.probs['Yes']:.2f} -> {VERDICT[s.best]:6} | judge {v.label:7} | {answer!r}")
    return row


def main(argv=None) -> None:
    import torch

    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.models.registry import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-text", type=int, default=8, help="text-only items for smollm2-135m (0: skip)")
    ap.add_argument("--n-image", type=int, default=4, help="image items for tiny-vlm (0: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="generation budget (the protocol's: 512)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--judge", default="classifier", help="judge of the generated answers (default: classifier)")
    args = ap.parse_args(argv)

    judge = load_judge(args.judge)
    print(f"logprob scoring vs generate-then-judge | greedy, max_new_tokens {args.max_new_tokens} | batch "
          f"{args.batch_size} | judge {args.judge} | torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs", flush=True)
    rows = []
    for name, n, make, task in (("smollm2-135m", args.n_text, text_queries, "alignment_text_only"),
                                ("tiny-vlm", args.n_image, image_queries, "alignment")):
        if n <= 0:
            continue
        backend = load_model(name)
        backend.batch_size = args.batch_size
        rows.append(compare(name, backend, make(n), task, judge, args.max_new_tokens))
        backend.close()
    for r in rows:
        print(f"{r['model']}: logprob_speedup: {r['speedup']:.1f}  agreement: "
              f"{r['agree'] / max(1, r['decided']):.2f}")
    n = sum(r["n"] for r in rows)
    t_lp = sum(r["n"] / r["logprob_rps"] for r in rows)
    t_gj = sum(r["n"] / r["gen_judge_rps"] for r in rows)
    decided = sum(r["decided"] for r in rows)
    print(f"logprob_speedup: {t_gj / t_lp:.1f}")
    print(f"agreement: {sum(r['agree'] for r in rows) / max(1, decided):.2f} ({decided} of {n} items decided by "
          "the judge)")


if __name__ == "__main__":
    main()
