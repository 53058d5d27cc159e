"""Throughput of the batched HF backend against one query at a time (how the reference code asks).

Same model, same queries, same greedy decoding and token budget in both paths; the only difference
is the batching. Prints responses/s and generated tokens/s of each path; the last line reads
``speedup: X.XX`` (batched responses/s over one-at-a-time responses/s).

    .venv/bin/python benchmarks/throughput.py --model smollm2-135m --n 32 --max-new-tokens 64 [--batch-size 16]

Without ``--batch-size`` the batched path uses the backend's own default (what an evaluation without
``--batch-size`` uses: 32 rows for SmolLM2 on a CPU).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see unsafe_concepts/__init__.py

from unsafe_concepts import prompts  # noqa: E402
from unsafe_concepts.models.base import GenerationConfig, Query  # noqa: E402
from unsafe_concepts.models.registry import load_model  # noqa: E402
from unsafe_concepts.taxonomy import CONCEPTS  # noqa: E402


def text_only_queries(n: int) -> list[Query]:
    """The protocol's text-only alignment questions, cycling prompts over consecutive concepts."""
    return [Query(id=f"q{i}", prompt=prompts.text_only_prompt(i % 5, CONCEPTS[i % len(CONCEPTS)]))
            for i in range(n)]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def report(name: str, gens, seconds: float) -> float:
    errors = sum(g.error is not None for g in gens)
    tokens = sum(g.n_tokens or 0 for g in gens)
    rps = len(gens) / seconds
    print(f"{name:>14}: {len(gens)} responses ({errors} errors), {tokens} generated tokens, {seconds:.1f} s, "
          f"{rps:.3f} responses/s, {tokens / seconds:.1f} tokens/s")
    return rps


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, help="rows per batch (default: the backend's own default)")
    ap.add_argument("--n", type=int, default=32, help="queries (a multiple of the batch size is fairest)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--dtype", help="model dtype override (default: automatic, float32 on CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    backend = load_model(args.model, dtype=args.dtype)
    args.batch_size = args.batch_size or backend.batch_size
    queries = text_only_queries(args.n)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
    print(f"model {args.model} | {args.n} text-only alignment queries | greedy, max_new_tokens "
          f"{args.max_new_tokens} | batch {args.batch_size} | {backend.describe()['dtype']} | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    backend.generate(queries[:2], GenerationConfig(max_new_tokens=4, do_sample=False))  # warm-up

    # Interleaved chunk by chunk (alternating which path goes first) so that both paths see the same
    # background load: on a shared machine a drift in load would otherwise favour one path.
    single, batched, t_single, t_batched = [], [], 0.0, 0.0
    for k, start in enumerate(range(0, len(queries), args.batch_size)):
        chunk = queries[start:start + args.batch_size]
        order = ("single", "batched") if k % 2 == 0 else ("batched", "single")
        for path in order:
            if path == "single":
                backend.batch_size = 1
                gens, dt = timed(lambda: [backend.generate([q], cfg)[0] for q in chunk])
                single += gens
                t_single += dt
            else:
                backend.batch_size = args.batch_size
                gens, dt = timed(lambda: backend.generate(chunk, cfg))
                batched += gens
                t_batched += dt
        print(f"chunk {k}: one at a time {t_single:.1f} s, batched {t_batched:.1f} s (cumulative)", flush=True)

    rps_single = report("one at a time", single, t_single)
    rps_batched = report(f"batched x{args.batch_size}", batched, t_batched)
    same = sum(a.text == b.text for a, b in zip(single, batched))
    print(f"identical responses in both paths: {same}/{len(queries)}")
    print(f"speedup: {rps_batched / rps_single:.2f}")


if __name__ == "__main__":
    main()
