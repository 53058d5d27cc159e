"""The paper's model size, measured: a randomly initialised LLaVA-1.5-7B (real shapes) through this
project's own code paths, on whatever device is at hand.

    python benchmarks/gpu_check.py                 # LLaVA-1.5-7B shapes, bf16, on CUDA (under 8 min on an H100/H200)
    python benchmarks/gpu_check.py --size tiny     # the same paths on a tiny model (CPU, CI: under 3 min)

Builds on the device, from a transformers config written here (no hub access): CLIP ViT-L/14 at 336 px
(24 layers, width 1024, features from the second-to-last layer), the 2-layer GELU MLP projector and a
LLaMA-7B language model (32 layers, width 4096, MLP 11008, vocabulary 32064 as llava-hf/llava-1.5-7b-hf),
in bf16; plus a word-level tokenizer built in code (no files: random weights need no real vocabulary,
only the real vocabulary size) and LLaVA-1.5's chat format. Random weights cost the same time and memory
as trained ones; they only answer nonsense, so the end-of-sequence token is switched off where a
measurement needs full-length answers.

Measured with the project's code:
1. ``generate``: ``HFBackend.generate`` (models/hf.py) on the alignment prompt with an image, greedy,
   the protocol's 512-token budget, one batch per batch size (``--batch-sizes``): responses/s, tokens/s.
2. ``logprob``: ``HFBackend.option_probs`` (Yes/No verdict from one forward pass), if this version has it.
3. ``ppo_step``: one step of ``train/ppo.py``'s PPOTrainer (LoRA r=128 on the language model, rollout of 32,
   512-token answers, value adapter), with the reference policy as the adapter-off policy (ours) and
   against a separate frozen copy of the model: seconds per step, peak GPU memory.
One JSON line per measurement, then a ``summary`` line projecting the full benchmark (7,835 visual
queries) and the paper's PPO run (4 epochs over 2 x 1,222 training images = 308 rollouts of 32).
Anything that cannot run (no CUDA, no peft, out of memory) is reported as ``"skipped"`` with the reason.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_BENCHMARK_QUERIES = 1567 * 5  # visual modality: every image x five prompts (the protocol)
PAPER_PPO_STEPS = 4 * math.ceil(2 * 1222 / 32)  # 4 epochs over 1,222 unsafe + 1,222 safe training images

# LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf config.json); "tiny" keeps the structure at toy widths.
SIZES = {
    "7b": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, projection_dim=768),
               text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
               vocab_size=32064, max_new_tokens=512, batch_sizes=(1, 8, 32), rollout=32, lora_r=128,
               response_len=512, logprob_batch=32),
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=56, patch_size=14, projection_dim=32),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5),
                 vocab_size=32064, max_new_tokens=4, batch_sizes=(1, 4), rollout=8, lora_r=8,
                 response_len=4, logprob_batch=8),
}
IMAGE_TOKEN, PAD_TOKEN = 32000, 32001  # as in llava-1.5-7b-hf
# LLaVA-1.5's chat format, as the llava-hf checkpoints' template renders one user turn.
CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
                 "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                 "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}"
                 "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %} "
                 "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def emit(measurement: str, **fields) -> dict:
    row = {"measurement": measurement, **fields}
    print(json.dumps(row), flush=True)
    return row


def _import_project():
    try:
        import unsafe_concepts  # noqa: F401
    except ImportError:  # a checkout that is not installed: use its src/
        sys.path.insert(0, str(ROOT / "src"))


# ---------------------------------------------------------------------------- the model


def build_tokenizer(vocab_size: int):
    """A word-level fast tokenizer with exactly the model's vocabulary: the protocol's words (so that
    prompts encode without unknowns and Yes/No are single tokens), then filler words. Like LLaMA's, it
    puts BOS (<s>, id 1) in front; EOS is </s> (id 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from unsafe_concepts import prompts
    from unsafe_concepts.taxonomy import CONCEPTS

    specials = ["<unk>", "<s>", "</s>"]
    words = set()
    for text in [*prompts.ALIGNMENT_PROMPTS, *prompts.ALIGNMENT_TEXT_ONLY_PROMPTS, *CONCEPTS, "Yes No yes no USER: ASSISTANT:"]:
        words.update(text.replace("{concept}", " ").split())
    words = sorted(words)
    n_plain = IMAGE_TOKEN - len(specials)
    vocab = specials + words + [f"w{i}" for i in range(n_plain - len(words))]
    vocab += ["<image>", "<pad>"] + [f"<extra_{i}>" for i in range(vocab_size - IMAGE_TOKEN - 2)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert fast.convert_tokens_to_ids("<image>") == IMAGE_TOKEN and len(fast) == vocab_size
    return fast


def build_llava(size: str, device, dtype):
    """(model, processor): random LLaVA-1.5 of the given size, built directly on ``device``."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    spec = SIZES[size]
    tok = build_tokenizer(spec["vocab_size"])
    vision = CLIPVisionConfig(**spec["vision"])
    text = LlamaConfig(vocab_size=spec["vocab_size"], bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN,
                       **spec["text"])
    n_patches = (spec["vision"]["image_size"] // spec["vision"]["patch_size"]) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                         projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_seq_length=n_patches)
    config.pad_token_id = PAD_TOKEN
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate the weights in their final dtype, on the device
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = PAD_TOKEN
    side = spec["vision"]["image_size"]
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=spec["vision"]["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    return model.eval(), processor


def random_images(n: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------------------- measurements


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_generation(backend, device, batch_sizes, max_new_tokens: int) -> list[dict]:
    from unsafe_concepts import prompts
    from unsafe_concepts.models.base import GenerationConfig, Query

    backend.eos_ids = set()  # random weights: every answer runs the full budget (the worst case)
    greedy = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
    images = random_images(max(batch_sizes))
    warm = backend.generate([Query("warm", prompts.alignment_prompt(0), images[0])],
                            GenerationConfig(max_new_tokens=2, do_sample=False))
    if warm[0].error:
        raise RuntimeError(f"warm-up generation failed: {warm[0].error}")
    rows = []
    for b in batch_sizes:
        backend.batch_size = b
        queries = [Query(f"q{i}", prompts.alignment_prompt(i % 5), images[i]) for i in range(b)]
        sync(device)
        t0 = time.perf_counter()
        out = backend.generate(queries, greedy)
        sync(device)
        seconds = time.perf_counter() - t0
        errors = [g.error for g in out if g.error]
        if errors:
            rows.append(emit("generate", batch_size=b, skipped=f"generation failed: {errors[0]}"))
            continue
        tokens = sum(g.n_tokens for g in out)
        rows.append(emit("generate", batch_size=b, max_new_tokens=max_new_tokens, seconds=round(seconds, 3),
                         responses_per_s=round(b / seconds, 3), tokens_per_s=round(tokens / seconds, 1),
                         mean_tokens=tokens / b, peak_gpu_gib=peak_gib(device)))
    return rows


def measure_logprob(backend, device, batch: int) -> dict:
    from unsafe_concepts import prompts
    from unsafe_concepts.models.base import Query

    if not hasattr(backend, "option_probs"):
        return emit("logprob", skipped="this version has no HFBackend.option_probs")
    backend.batch_size = batch
    images = random_images(batch, seed=1)
    queries = [Query(f"s{i}", prompts.alignment_prompt(i % 5), images[i]) for i in range(batch)]
    backend.option_probs(queries[:1], ("Yes", "No"))  # warm-up (and the option token ids, cached)
    sync(device)
    t0 = time.perf_counter()
    out = backend.option_probs(queries, ("Yes", "No"))
    sync(device)
    seconds = time.perf_counter() - t0
    errors = [o.error for o in out if o.error]
    if errors:
        return emit("logprob", batch_size=batch, skipped=f"scoring failed: {errors[0]}")
    return emit("logprob", batch_size=batch, seconds=round(seconds, 3), queries_per_s=round(batch / seconds, 2),
                peak_gpu_gib=peak_gib(device))


def peak_gib(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def measure_ppo(model, processor, size: str, device, steps: int, variants) -> list[dict]:
    """One PPO trainer per variant on the same base weights; LoRA is removed again between variants."""
    import torch

    try:
        import peft  # noqa: F401
    except ImportError:
        return [emit("ppo_step", skipped="peft is not installed (pip install peft)")]
    from unsafe_concepts import prompts
    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.train import common, ppo
    from unsafe_concepts.train.data import TrainItem

    spec = SIZES[size]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, im in enumerate(random_images(spec["rollout"], seed=2)):
            paths.append(str(Path(tmp) / f"{i}.png"))
            im.save(paths[-1])
        items = [TrainItem(id=f"img{i}", prompt=prompts.alignment_prompt(i % 5),
                           image=p, label="unsafe" if i % 2 else "safe", concept="Gun", category="Violence",
                           prompt_index=i % 5) for i, p in enumerate(paths)]
        for variant in variants:
            cfg = ppo.PPOConfig(model="gpu-check", modality="image", out_dir=str(Path(tmp) / variant),
                                lora_r=spec["lora_r"], lora_alpha=2 * spec["lora_r"], rollout_batch_size=spec["rollout"],
                                mini_batch_size=spec["rollout"], response_len=spec["response_len"],
                                max_steps=steps, save_steps=10**9, seed=0, judge="rule",
                                dtype=str(model.dtype).replace("torch.", ""))
            trainer = policy = None
            try:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                for p in model.parameters():
                    p.requires_grad_(False)
                policy = common.add_lora(model, cfg)
                cls = ppo.PPOTrainer if variant == "adapter_off" else separate_reference_trainer(ppo)
                trainer = cls(cfg, items, judge=load_judge("rule"), model=policy, processor=processor, quiet=True)
                times, stats = [], {}
                for step in range(steps):
                    sync(device)
                    t0 = time.perf_counter()
                    stats = trainer.train_step(trainer.batch_for_step(step))
                    sync(device)
                    times.append(time.perf_counter() - t0)
                rows.append(emit("ppo_step", variant=variant, lora_r=cfg.lora_r, rollout=cfg.rollout_batch_size,
                                 response_len=cfg.response_len, steps=steps, step_s=[round(t, 2) for t in times],
                                 mean_response_len=stats.get("response_len"), rollout_s=stats.get("rollout_s"),
                                 peak_gpu_gib=peak_gib(device)))
            except torch.OutOfMemoryError as e:  # report and go on: the other variant may fit
                rows.append(emit("ppo_step", variant=variant, skipped=f"out of memory: {str(e).splitlines()[0]}",
                                 peak_gpu_gib=peak_gib(device)))
            finally:
                del trainer
                if policy is not None:
                    model = policy.unload()  # the base weights again, without any LoRA layer
    return rows


def separate_reference_trainer(ppo):
    """What PPO without PEFT keeps in memory: a frozen copy of the base model as the reference policy."""

    class SeparateReferenceTrainer(ppo.PPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            base = self.model.get_base_model()
            with self.model.disable_adapter():
                self.ref_model = copy.deepcopy(base)
            for module in list(self.ref_model.modules()):
                for name, child in list(module.named_children()):
                    if hasattr(child, "base_layer"):  # a LoRA layer -> the original Linear
                        setattr(module, name, child.base_layer)
            self.ref_model.eval().requires_grad_(False)

        def reference_logprobs(self, query, responses, mask):
            policy, self.model = self.model, self.ref_model
            try:
                ref, _, _ = self._forward(query, responses, mask, with_values=False)
            finally:
                self.model = policy
            return ref

    return SeparateReferenceTrainer


# ---------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="7b")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA (the paper's precision), float32 on CPU")
    p.add_argument("--batch-sizes", help="generation batch sizes, comma-separated (default: 1,8,32 for 7b)")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: 512 for 7b, 4 for tiny)")
    p.add_argument("--ppo-steps", type=int, default=1, help="PPO steps per variant (the first includes warm-up)")
    p.add_argument("--skip", default="", help="comma-separated: generate, logprob, ppo, ppo_copy")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    _import_project()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    spec = SIZES[args.size]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.size == "7b" and device.type != "cuda":
        emit("environment", warning="the 7b size on a CPU takes hours and ~30 GB of memory; use --size tiny here")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    skip = {s for s in args.skip.split(",") if s}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    emit("environment", size=args.size, device=str(device), gpu=gpu, dtype=str(dtype).replace("torch.", ""),
         torch=torch.__version__, transformers=transformers.__version__, python=sys.version.split()[0])

    t0 = time.perf_counter()
    model, processor = build_llava(args.size, device, dtype)
    sync(device)
    n_params = sum(p.numel() for p in model.parameters())
    emit("build", seconds=round(time.perf_counter() - t0, 1), parameters=n_params, peak_gpu_gib=peak_gib(device))

    from unsafe_concepts.models.hf import HFBackend

    backend = HFBackend.from_loaded(model, processor, spec=f"gpu-check:llava-1.5-7b-shapes:{args.size}")
    results: dict[str, list] = {"generate": [], "logprob": [], "ppo": []}
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else list(spec["batch_sizes"])
    max_new = args.max_new_tokens or spec["max_new_tokens"]
    for name, run in (("generate", lambda: measure_generation(backend, device, batch_sizes, max_new)),
                      ("logprob", lambda: [measure_logprob(backend, device, spec["logprob_batch"])])):
        if name in skip:
            continue
        try:
            results[name] = run()
        except Exception as e:  # noqa: BLE001 - one failed measurement must not hide the others
            results[name] = [emit(name, skipped=f"{type(e).__name__}: {e}", where=traceback.format_exc(limit=3))]
    if "ppo" not in skip:
        variants = ["adapter_off"] + ([] if "ppo_copy" in skip else ["separate_copy"])
        try:
            results["ppo"] = measure_ppo(model, processor, args.size, device, args.ppo_steps, variants)
        except Exception as e:  # noqa: BLE001
            results["ppo"] = [emit("ppo_step", skipped=f"{type(e).__name__}: {e}", where=traceback.format_exc(limit=5))]

    summary = {"size": args.size, "device": str(device), "gpu": gpu, "wall_s": round(time.perf_counter() - t_start, 1)}
    gen = [r for r in results["generate"] if "responses_per_s" in r]
    if gen:
        best = max(gen, key=lambda r: r["responses_per_s"])
        summary["generate_best"] = {"batch_size": best["batch_size"], "responses_per_s": best["responses_per_s"],
                                    "tokens_per_s": best["tokens_per_s"]}
        summary["full_benchmark_generate_h"] = round(FULL_BENCHMARK_QUERIES / best["responses_per_s"] / 3600, 2)
        summary["full_benchmark_note"] = (f"{FULL_BENCHMARK_QUERIES} visual queries, every answer at the full "
                                          f"{best['max_new_tokens']}-token budget (an upper bound: real answers stop earlier)")
    scored = [r for r in results["logprob"] if "queries_per_s" in r]
    if scored:
        summary["full_benchmark_logprob_min"] = round(FULL_BENCHMARK_QUERIES / scored[0]["queries_per_s"] / 60, 1)
    ppo_rows = {r["variant"]: r for r in results["ppo"] if "step_s" in r}
    if "adapter_off" in ppo_rows:
        step = ppo_rows["adapter_off"]["step_s"][-1]
        summary["ppo_step_s"] = step
        summary["ppo_peak_gpu_gib"] = ppo_rows["adapter_off"]["peak_gpu_gib"]
        summary["paper_ppo_run_h"] = round(PAPER_PPO_STEPS * step / 3600, 2)
        summary["paper_ppo_steps"] = PAPER_PPO_STEPS
    if "separate_copy" in ppo_rows and "adapter_off" in ppo_rows:
        summary["separate_copy_step_s"] = ppo_rows["separate_copy"]["step_s"][-1]
        summary["separate_copy_peak_gpu_gib"] = ppo_rows["separate_copy"]["peak_gpu_gib"]
    summary["skipped"] = [f"{r['measurement']}: {r['skipped']}" for rows in results.values() for r in rows if "skipped" in r]
    emit("summary", **summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
