"""Milliseconds per decoding step of SmolLM2-135M's ``generate()`` on the CPU (float32, 2 threads,
sampling at temperature 1 with no truncation, PPO's log-prob recorder in the processor list), with the
pieces of ``unsafe_concepts.models.cpu_decode`` added one at a time, side by side in one process on
the same left-padded prompts:

    default                 transformers' DynamicCache, MKL linears, torch.multinomial
    +cache                  PreallocatedCache (no per-step copy of the KV cache)
    +cache+packed           ... and packed_linears (oneDNN prepacked weights)
    +cache+packed+sampler   ... and InverseCDFSampler (generate(do_sample=False) + inverse-CDF draw)

A step's time is the wall time between two consecutive calls of the logits processors (one forward
of one token per row, plus sampling), so the prefill is excluded; every answer is forced to the full
length (min_new_tokens). Runs are short on purpose (the machine is shared): one generation per
variant and batch size after a small warm-up.

    .venv/bin/python benchmarks/decode.py [--new-tokens 256|512] [--batches 16 | 8,16,32]

The default (B=16, 256 new tokens) takes ~5 min on two cores; ``--batches 8,16,32`` runs the whole
table (~15 min: 12 generations of 256 steps at 0.2-0.5 s a step cannot fit in less). Prints one line
per (batch, variant) - wall and CPU ms per step, and the speedup over default - then
``decode_speedup_b<B>: X`` (default / all three pieces, wall time) for each batch size. Timings move
with the machine's load: compare within one run, and prefer the CPU-time ratios on a shared machine.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort a shared 2-core CPU

import argparse  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

VARIANTS = ("default", "+cache", "+cache+packed", "+cache+packed+sampler")
TOPICS = ["cook", "fight tigers in the forest at night", "swim", "drive", "lie to my boss about being sick",
          "steal bread", "run a marathon without training", "jump", "mix bleach and ammonia", "climb a volcano",
          "eat raw cookie dough", "hack my own router", "walk alone at night in a big city", "fast for a week",
          "pet a stray dog", "skip the vaccine"]


class StepClock:
    """A logits processor that only reads the clocks: the gaps between its calls are decoding steps.

    Wall time is what a run costs; the process's CPU time (all its threads) is also kept because it
    moves much less when another process shares the two cores (with OMP_WAIT_POLICY=PASSIVE, a
    thread waiting for a core is not charged), so its ratios are the steadier comparison."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, input_ids, scores):
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return scores

    def ms_per_step(self) -> tuple[float, float]:
        steps = max(1, len(self.wall) - 1)
        return (1000 * (self.wall[-1] - self.wall[0]) / steps, 1000 * (self.cpu[-1] - self.cpu[0]) / steps)


def recorder():
    """PPO's log-prob recorder (what the trainer runs in every sampling step)."""
    from unsafe_concepts.train.ppo import SampledLogprobs

    return SampledLogprobs()


def run(model, tok, query: dict, variant: str, new_tokens: int, seed: int = 0) -> tuple[float, float]:
    """(wall, CPU) ms per decoding step of one generate() call with ``variant``'s pieces."""
    from transformers import GenerationConfig, LogitsProcessorList

    from unsafe_concepts.models.cpu_decode import InverseCDFSampler, PreallocatedCache, packed_linears

    cache = "+cache" in variant
    sampler = "+sampler" in variant
    clock = StepClock()
    processors = [clock, recorder()] + ([InverseCDFSampler()] if sampler else [])
    gen = GenerationConfig(do_sample=not sampler, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    total = query["input_ids"].shape[1] + new_tokens
    kwargs = {"cache": PreallocatedCache(model.config, max_length=total)} if cache else {}
    torch.manual_seed(seed)
    with torch.no_grad(), (packed_linears(model) if "+packed" in variant else contextlib.nullcontext()):
        out = model.generate(**query, generation_config=gen, logits_processor=LogitsProcessorList(processors), **kwargs)
    assert out.shape[1] == query["input_ids"].shape[1] + new_tokens
    return clock.ms_per_step()


def sampler_cost(batch: int = 16, vocab: int = 49152, reps: int = 40) -> tuple[float, float]:
    """ms per step of generate()'s sampling (softmax + torch.multinomial) vs the inverse-CDF
    processor followed by generate(do_sample=False)'s argmax, on random logits."""
    from unsafe_concepts.models.cpu_decode import InverseCDFSampler

    logits = torch.randn(batch, vocab) * 4
    sampler = InverseCDFSampler()

    def multinomial():
        return torch.multinomial(torch.softmax(logits, -1), num_samples=1)

    def inverse_cdf():
        return sampler(None, logits).argmax(-1)

    def clock(f) -> float:
        for _ in range(3):
            f()
        t = time.perf_counter()
        for _ in range(reps):
            f()
        return 1000 * (time.perf_counter() - t) / reps

    return clock(multinomial), clock(inverse_cdf)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batches", default="16", help="comma-separated batch sizes, e.g. 8,16,32")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    import transformers

    transformers.logging.set_verbosity_error()  # generate()'s notes on top_k etc. are not results
    from unsafe_concepts.models.cpu_decode import packed_linears
    from unsafe_concepts.train import common

    model, proc = common.load_base_model("smollm2-135m")
    common.prepare_processor(proc)
    tok = common.tokenizer_of(proc)
    model.eval()
    variants = [v for v in args.variants.split(",") if v]
    # warm-up: oneDNN/MKL pick kernels on first use. The default pass first, so the (memory-mapped)
    # weights are resident before the packed copy is measured, and no freed packed copy is reused.
    warm = common.encode_prompts(proc, [f"Is it safe to {TOPICS[0]}?"] * 2, None, max_prompt_len=256)
    run(model, tok, warm, "default", 4)
    before = rss_mib()
    with packed_linears(model) as info:
        grown = rss_mib() - before
    for v in variants:
        run(model, tok, warm, v, 4)
    print(f"threads={torch.get_num_threads()} new_tokens={args.new_tokens}; packed_linears: {len(info.names)} "
          f"linears, {info.packed_bytes / 2**20:.0f} MiB of packed weights (resident memory +{grown:.0f} MiB inside)")
    multinomial_ms, inverse_ms = sampler_cost()
    print(f"sampling one step at B=16, V=49152: softmax+multinomial {multinomial_ms:.2f} ms, "
          f"InverseCDFSampler+argmax {inverse_ms:.2f} ms")
    results: dict[int, dict[str, tuple[float, float]]] = {}
    t_start = time.perf_counter()
    for batch in (int(b) for b in args.batches.split(",") if b):
        prompts = [f"Is it safe to {TOPICS[i % len(TOPICS)]}? Answer and explain at length." for i in range(batch)]
        query = common.encode_prompts(proc, prompts, None, max_prompt_len=256)
        results[batch] = {}
        for v in variants:
            wall, cpu = results[batch][v] = run(model, tok, query, v, args.new_tokens)
            base = results[batch].get("default")
            ratio = f"  speedup x{base[0] / wall:.2f} (cpu x{base[1] / cpu:.2f})" if base else ""
            print(f"B={batch:<3d} prompt={query['input_ids'].shape[1]:<3d} {v:<24s} {wall:7.1f} ms/step "
                  f"(cpu {cpu:6.1f}){ratio}", flush=True)
    for batch, r in results.items():
        if "default" in r and VARIANTS[-1] in r:
            print(f"decode_speedup_b{batch}: {r['default'][0] / r[VARIANTS[-1]][0]:.2f}")
    print(f"(measured in {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
