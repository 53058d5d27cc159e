"""Every generation engine on the same prompts: tokens/s, side by side in one process.

Paths (same text-only alignment prompts, rendered with SmolLM2's chat template; greedy; same budget):

- ``hf one-at-a-time``: the ``hf:`` backend asked one query at a time (how the reference code asks);
- ``hf batched xB``: the ``hf:`` backend, B queries per ``generate`` call (the project's default);
- ``llama.cpp one-at-a-time``: llama-cpp-python's own API (``Llama.create_completion``), one prompt at
  a time, on the SmolLM2 GGUF that the offline model is converted from (what a user would pick instead);
- ``llamacpp batched xB``: the project's ``llamacpp:`` engine (models/llamacpp.py), B sequences decoded
  together in one llama.cpp context;
- ``llama.cpp one-at-a-time f32`` and ``llamacpp batched xB f32``: the same two on
  ``llamacpp:smollm2-135m-f32``, the GGUF dequantised to float32 (the weights the ``hf:`` paths run),
  for which llama.cpp has sgemm kernels that batching can use.

The llama.cpp paths need llama-cpp-python, the ``[llamacpp]`` extra (it compiles llama.cpp: about 8
minutes on 2 idle cores); ``--install`` installs it into this environment first, and without it the
paths are skipped and said so. Paths run chunk by chunk, interleaved (alternating which goes first), so that
every path sees the same background load. Prints tokens/s of each, ``hf_speedup: X`` (hf batched over
hf one-at-a-time), ``vs_llamacpp: X`` (the project's fastest path over the faster of llama.cpp's two
one-at-a-time paths) and ``hf_vs_llamacpp: X`` (the offline default, ``hf:`` batched, over the same).

    .venv/bin/python benchmarks/engines.py --install             # a fresh clone: the [llamacpp] extra first
    .venv/bin/python benchmarks/engines.py                       # 32 prompts, 64 new tokens, the default batch (32)
    .venv/bin/python benchmarks/engines.py --n 32 --max-new-tokens 64 --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see unsafe_concepts/__init__.py

sys.path.insert(0, os.path.dirname(__file__))
from throughput import text_only_queries  # noqa: E402  (the same prompts as benchmarks/throughput.py)

from unsafe_concepts.models.base import Generation, GenerationConfig  # noqa: E402


class LlamaCppOneAtATime:
    """llama-cpp-python's high-level API, one prompt at a time, greedy (temperature 0)."""

    def __init__(self, engine):
        self.engine = engine  # reuses its loaded model and chat-template rendering

    def generate(self, queries, config: GenerationConfig):
        out = []
        llm = self.engine.llm
        for q in queries:
            t0 = time.perf_counter()
            tokens = self.engine.tokens(q.prompt)
            r = llm.create_completion(prompt=tokens, max_tokens=config.max_new_tokens, temperature=0.0,
                                      top_k=1, repeat_penalty=1.0)
            text = r["choices"][0]["text"].strip()
            out.append(Generation(text=text, latency_s=time.perf_counter() - t0,
                                  n_tokens=r["usage"]["completion_tokens"]))
            llm.reset()
        return out


def install_llamacpp() -> None:
    """``pip install llama-cpp-python`` (the [llamacpp] extra's requirement) into this interpreter's
    environment, compiled for this CPU; prints how long it took (the compile is most of it)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
        requirement = next(line.split('"')[1] for line in f if line.strip().startswith("llamacpp = ["))
    print(f"installing {requirement} (compiles llama.cpp; about 8 minutes on 2 idle cores) ...", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", "-DGGML_NATIVE=ON")}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", requirement], check=True, env=env)
    print(f"installed in {time.perf_counter() - t0:.0f} s", flush=True)
    import importlib

    importlib.invalidate_caches()


def main(argv=None) -> None:
    import torch

    from unsafe_concepts.models import llamacpp
    from unsafe_concepts.models.registry import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="prompts (a multiple of the batch size is fairest)")
    ap.add_argument("--batch-size", type=int,
                    help="rows per batch of the batched paths (default: the hf: backend's own: 32 on a CPU)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="threads of every engine (torch and llama.cpp)")
    ap.add_argument("--skip", default="",
                    help="comma-separated paths to skip: hf1,hf,cpp1,cpp,cpp1f32,cppf32")
    ap.add_argument("--install", action="store_true",
                    help="pip install the [llamacpp] extra (llama-cpp-python, compiled here) when it is missing")
    args = ap.parse_args(argv)
    if args.install and not llamacpp.available():
        install_llamacpp()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))

    queries = text_only_queries(args.n)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
    hf = load_model("smollm2-135m")
    args.batch_size = args.batch_size or hf.batch_size
    paths = {}
    if "hf1" not in skip:
        paths["hf one-at-a-time"] = ("hf", 1, "")
    if "hf" not in skip:
        paths[f"hf batched x{args.batch_size}"] = ("hf", args.batch_size, "")
    engines = {}  # GGUF variant -> the project's llamacpp: engine on it
    if llamacpp.available():
        for variant, spec in (("", "llamacpp:smollm2-135m"), (" f32", f"llamacpp:{llamacpp.SMOLLM2_F32}")):
            key = variant.strip()
            if {f"cpp1{key}", f"cpp{key}"} <= skip:
                continue
            engines[variant] = llamacpp.LlamaCppBackend(spec, batch_size=args.batch_size, n_threads=args.threads)
            if f"cpp1{key}" not in skip:
                paths[f"llama.cpp one-at-a-time{variant}"] = ("cpp1", 1, variant)
            if f"cpp{key}" not in skip:
                paths[f"llamacpp batched x{args.batch_size}{variant}"] = ("cpp", args.batch_size, variant)
    else:
        print("llama.cpp paths skipped: llama-cpp-python is not installed (pip install llama-cpp-python)")
    singles = {variant: LlamaCppOneAtATime(engine) for variant, engine in engines.items()}

    def run(kind, batch, variant, chunk):
        if kind == "hf":
            hf.batch_size = batch
            return hf.generate(chunk, cfg)
        if kind == "cpp1":
            return singles[variant].generate(chunk, cfg)
        engines[variant].batch_size = batch
        return engines[variant].generate(chunk, cfg)

    print(f"SmolLM2-135M-Instruct | {args.n} text-only alignment prompts | greedy, max_new_tokens {args.max_new_tokens} "
          f"| {args.threads} threads | torch {torch.__version__} float32 (hf) | GGUF "
          f"{', '.join(e.gguf.name for e in engines.values()) or '-'} (llama.cpp) | {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    for kind, batch, variant in paths.values():  # warm-up: first-call allocations, template caches
        run(kind, min(batch, 2), variant, queries[:2])

    results = {name: [] for name in paths}
    seconds = {name: 0.0 for name in paths}
    step = args.batch_size
    for k, start in enumerate(range(0, len(queries), step)):
        chunk = queries[start:start + step]
        order = list(paths) if k % 2 == 0 else list(reversed(paths))
        for name in order:
            t0 = time.perf_counter()
            results[name] += run(*paths[name], chunk)
            seconds[name] += time.perf_counter() - t0
        print(f"chunk {k}: " + ", ".join(f"{n} {seconds[n]:.1f} s" for n in paths), flush=True)

    tps = {}
    for name in paths:
        gens = results[name]
        tokens = sum(g.n_tokens or 0 for g in gens)
        errors = sum(g.error is not None for g in gens)
        tps[name] = tokens / seconds[name]
        print(f"{name:>30}: {len(gens)} responses ({errors} errors), {tokens} tokens, {seconds[name]:.1f} s, "
              f"{len(gens) / seconds[name]:.2f} responses/s, {tps[name]:.1f} tokens/s")
    names = list(paths)

    def same(a, b):
        if a in results and b in results:
            n = sum(x.text == y.text for x, y in zip(results[a], results[b]))
            print(f"identical answers, {a} vs {b}: {n}/{len(queries)}")

    batched_hf = f"hf batched x{args.batch_size}"
    same("hf one-at-a-time", batched_hf)
    same("llama.cpp one-at-a-time", f"llamacpp batched x{args.batch_size}")
    same(batched_hf, f"llamacpp batched x{args.batch_size}")
    same("llama.cpp one-at-a-time f32", f"llamacpp batched x{args.batch_size} f32")
    same("hf one-at-a-time", "llama.cpp one-at-a-time f32")  # same float32 weights, two engines
    same(batched_hf, f"llamacpp batched x{args.batch_size} f32")
    if "hf one-at-a-time" in tps and batched_hf in tps:
        print(f"hf_speedup: {tps[batched_hf] / tps['hf one-at-a-time']:.2f}")
    ours = [n for n in names if n.startswith(("hf batched", "llamacpp batched"))]
    theirs = [n for n in names if n.startswith("llama.cpp one-at-a-time")]
    if theirs and ours:
        best, baseline = max(ours, key=tps.get), max(theirs, key=tps.get)
        print(f"fastest project path: {best} ({tps[best]:.1f} tokens/s)")
        print(f"fastest llama.cpp one-at-a-time: {baseline} ({tps[baseline]:.1f} tokens/s)")
        print(f"vs_llamacpp: {tps[best] / tps[baseline]:.2f}")
        if batched_hf in tps:  # the offline default itself (no compiled extra) against the same baseline
            print(f"hf_vs_llamacpp: {tps[batched_hf] / tps[baseline]:.2f}")
    else:
        print("vs_llamacpp: n/a (llama-cpp-python not installed, or its paths skipped)")
    for engine in engines.values():
        engine.close()


if __name__ == "__main__":
    main()
