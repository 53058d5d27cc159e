"""Post-training evaluation (the protocol's ``post_training_evaluation``): a named suite of registered tasks,
asked of one model (+ an optional adapter) by the one runner (``unsafe_concepts.runs``), each into an
ordinary run folder ``<out>/<task>`` that ``report`` reads like any other:

- UnsafeConcepts_TEST (``unsafeconcepts_test``, ``unsafeconcepts_test_text``, or ``heldout_text`` for the
  concept-held-out text experiment): accuracy overall / safe / unsafe, unclear counted wrong, 1 - Self-BLEU;
- general capability: ``mme`` (MME's string rule and scores), ``llavabench`` (LLM review), and
  ``general_yes_no`` (held-out yes/no questions, P(Yes) vs P(No) where the model gives log-probabilities);
- generalisation: ``smid``, ``nsfw`` (one alignment prompt per image as the reference draws it).

A set whose source is not given is skipped; nothing downloads unless a source says ``hf``. Decoding is
greedy by default, as the reference's evaluation.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

from unsafe_concepts.errors import UserError

SETS = ("unsafeconcepts", "mme", "llavabench", "smid", "nsfw", "general")


@dataclass
class PostEvalConfig:
    model: str
    out_dir: str
    adapter: str | None = None
    # sources (None = skip the set)
    # dataset spec for UnsafeConcepts_TEST: "sample" (the offline synthetic sample, announced), a folder, "hf",
    # or "heldout-text"; None skips it
    unsafeconcepts: str | None = "sample"
    modality: str = "image"  # UnsafeConcepts_TEST modality: image or text
    safe_data: str | None = None
    mme: str | None = None
    llavabench: str | None = None
    smid: str | None = None
    nsfw: str | None = None
    general: bool = False  # the held-out general-knowledge yes/no check (ships with the package)
    # scorers
    judge: str | None = None  # response judge for the alignment sets; None = the default judge
    llava_judge: str | None = None  # model spec of the LLaVA-Bench judge (required when llavabench is set)
    # generation: greedy by default, as the reference's evaluation (512 new tokens)
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 0.9
    greedy: bool = True
    seed: int = 0
    batch_size: int | None = None  # None: the backend's own
    limit: int | None = None  # queries per set, spread over concepts/categories (the runner's --limit)
    pairing: str = "reference"
    dtype: str | None = None
    device: str | None = None
    base_url: str | None = None  # for openai: models
    api_key_env: str = "OPENAI_API_KEY"  # the variable's name; the key itself is never stored
    concurrency: int = 64  # parallel requests for openai: models (the client's default)
    text_only: bool = False  # the model cannot see images (see `evaluate --text-only`)
    timeout: float | None = None  # per request, openai: models; None: the backend's default
    device_map: str | None = None  # hf: models over several GPUs ("auto")
    trust_remote_code: bool = False  # hf: models that ship their own code (recorded)
    prompt_format: str | None = None  # hf: models: None/"auto" or "llava-v1" (models/inputs.py)

    def validate(self) -> None:
        if self.modality not in ("image", "text"):
            raise UserError(f"modality must be image or text, got {self.modality!r}")
        if self.llavabench and not self.llava_judge:
            raise UserError("LLaVA-Bench needs a judge model: set llava_judge (e.g. openai:gpt-4o or hf:<path>)")
        if not any(getattr(self, name) for name in SETS):
            raise UserError("nothing to evaluate: give at least one set source (unsafeconcepts, mme, llavabench, "
                            "smid, nsfw, general)")

    def plan(self) -> list[tuple[str, str | None, str]]:
        """(task, data, scoring) for every set whose source is given, in the paper's table order."""
        steps = []
        if self.unsafeconcepts:
            if self.unsafeconcepts == "heldout-text":
                steps.append(("heldout_text", "heldout-text", "generate"))
            else:
                task = "unsafeconcepts_test" if self.modality == "image" else "unsafeconcepts_test_text"
                steps.append((task, self.unsafeconcepts, "generate"))
        for name in ("mme", "llavabench", "smid", "nsfw"):
            if getattr(self, name):
                steps.append((name, getattr(self, name), "generate"))
        if self.general:
            steps.append(("general_yes_no", "general-check", "logprob"))
        return steps

    def run_config(self, task: str, data: str | None, scoring: str):
        from unsafe_concepts.runs import RunConfig

        return RunConfig(model=self.model, task=task, data=data, adapter=self.adapter, safe_data=self.safe_data,
                         generation={"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                                     "top_p": self.top_p, "do_sample": not self.greedy, "seed": self.seed},
                         limit=self.limit, pairing=self.pairing, batch_size=self.batch_size, judge=self.judge,
                         llava_judge=self.llava_judge, base_url=self.base_url, api_key_env=self.api_key_env,
                         dtype=self.dtype, device=self.device, concurrency=self.concurrency,
                         timeout=self.timeout, device_map=self.device_map,
                         trust_remote_code=self.trust_remote_code, prompt_format=self.prompt_format,
                         text_only=self.text_only, scoring=scoring, suite="posteval")


def run_posteval(config: PostEvalConfig, *, backend=None, judge=None, llava_judge=None, quiet: bool = False) -> dict:
    """Run every set of the suite with the one runner; returns {task: RunResult}. A failing set is
    reported and the others still run; the error is raised at the end if every set failed."""
    from unsafe_concepts import runs
    from unsafe_concepts.scorers import JudgeScorer, default_judge, scorer_for
    from unsafe_concepts.tasks import get_task

    config.validate()
    plan = config.plan()
    configs = [config.run_config(*step) for step in plan]
    for c in configs:
        runs.prepare(c)  # every set's settings and data are checked before the model loads
    out = Path(config.out_dir)
    backends = {config.model: backend} if backend is not None else {}

    def lazy():
        if config.model not in backends:
            backends[config.model] = runs.load_backend(configs[0])
        return backends[config.model]

    results, failures = {}, {}
    for c in configs:
        task = get_task(c.task)
        if c.scoring == "logprob" and not getattr(lazy(), "supports_logprobs", False):
            c = replace(c, scoring="generate")  # MME's string rule reads the generated yes/no instead
        scorer = None
        if c.scoring == "generate":
            if task.scorer == "judge" and judge is not None:
                scorer = JudgeScorer(judge, c.judge or default_judge(), task.kind)
            elif task.scorer == "llava-review":
                scorer = scorer_for(task, llava_judge=c.llava_judge, llava_judge_model=llava_judge,
                                    api_key_env=c.api_key_env)
        try:
            results[c.task] = runs.run_task(c, out / c.task, backend=lazy, scorer=scorer, quiet=quiet,
                                            summary=not quiet)
        except UserError as e:
            failures[c.task] = str(e)
            print(f"error: {c.task}: {e}", file=sys.stderr)
    if failures and not results:
        raise UserError("every set failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    return {"results": results, "failures": failures, "out": out}


def cli_posteval(args) -> int:
    """``unsafe-concepts posteval``: the argparse namespace carries PostEvalConfig's field names
    (``--out`` -> out_dir; ``--unsafeconcepts none`` skips that set)."""
    values = {f.name: getattr(args, f.name) for f in fields(PostEvalConfig) if getattr(args, f.name, None) is not None}
    values["out_dir"] = args.out
    values["greedy"] = not getattr(args, "sample", False)  # greedy unless asked (the reference's evaluation)
    if str(values.get("unsafeconcepts", "")).lower() == "none":
        values["unsafeconcepts"] = None
    config = PostEvalConfig(**values)
    if config.unsafeconcepts == "sample":
        print("note: UnsafeConcepts_TEST on --unsafeconcepts sample is the offline SYNTHETIC sample", file=sys.stderr)
    done = run_posteval(config)
    print(f"\n{len(done['results'])} of {len(config.plan())} sets done; run folders under {config.out_dir}")
    print(f"next: unsafe-concepts report {config.out_dir}/* --out {config.out_dir}/report")
    return 0 if not done["failures"] else 1
