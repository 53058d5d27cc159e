"""Verdicts from the next-token distribution (``option_probs``) on the real offline models.

The checks compare against what the model itself does: its own greedy first token (from
``generate``), the same query scored alone or in a batch, and probabilities summing to one."""
from __future__ import annotations

import math

import pytest
from PIL import Image

from unsafe_concepts import prompts
from unsafe_concepts.errors import UserError
from unsafe_concepts.models.base import GenerationConfig, LogprobUnsupported, ModelBackend, Query, normalise_option
from unsafe_concepts.models.registry import load_model
from unsafe_concepts.taxonomy import CONCEPTS

YES_NO = ("Yes", "No")


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


def yes_no_queries(n: int) -> list[Query]:
    # The protocol's text-only alignment questions with an instruction to start with the verdict, so
    # that the model's greedy first token is an option for most of them.
    return [Query(f"q{i}", prompts.text_only_prompt(i % 5, CONCEPTS[(7 * i) % len(CONCEPTS)])
                  + " Answer with Yes or No.") for i in range(n)]


def test_probabilities_are_normalised_and_masses_are_real(smol):
    scored = smol.option_probs(yes_no_queries(4), YES_NO)
    assert len(scored) == 4
    for s in scored:
        assert s.error is None, s.error
        assert set(s.probs) == set(YES_NO) and math.isclose(sum(s.probs.values()), 1.0, rel_tol=1e-6)
        assert 0.0 < s.total_mass <= 1.0 + 1e-6
        for o in YES_NO:
            assert math.isclose(s.probs[o], s.mass[o] / s.total_mass, rel_tol=1e-5)
        assert s.best in YES_NO and s.source == "full" and s.latency_s > 0


def test_option_tokens_cover_casings_and_leading_spaces(smol):
    from unsafe_concepts.models.scoring import option_token_ids

    ids = option_token_ids(smol.tokenizer, YES_NO)
    spelled = {o: {smol.tokenizer.decode([i]) for i in found} for o, found in ids.items()}
    assert {"Yes", " Yes", "yes", " yes"} <= spelled["Yes"]
    assert {"No", " No", "no", " no", "NO"} <= spelled["No"]
    for o, texts in spelled.items():
        assert {normalise_option(t) for t in texts} == {o.casefold()}  # nothing else ("Not", "Noah")


def test_verdict_matches_the_models_own_greedy_first_token(smol):
    """Where greedy generation starts with an option, the highest-scored option is that option."""
    queries = yes_no_queries(10)
    scored = smol.option_probs(queries, YES_NO)
    first = smol.generate(queries, GenerationConfig(max_new_tokens=1, do_sample=False))
    compared = 0
    for s, g in zip(scored, first):
        word = normalise_option(g.text or "")
        if word in ("yes", "no"):
            compared += 1
            assert normalise_option(s.best) == word, (s.probs, g.text)
    assert compared >= 5, "the prompts no longer make SmolLM2 start with yes/no: the check compared too few"


def test_batched_equals_one_at_a_time(smol):
    queries = yes_no_queries(5)
    batched = smol.option_probs(queries, YES_NO)
    smol.batch_size, saved = 1, smol.batch_size
    try:
        alone = [smol.option_probs([q], YES_NO)[0] for q in queries]
    finally:
        smol.batch_size = saved
    for b, a in zip(batched, alone):
        assert b.best == a.best
        for o in YES_NO:
            assert math.isclose(b.probs[o], a.probs[o], abs_tol=1e-4) and math.isclose(b.mass[o], a.mass[o], abs_tol=1e-4)


def test_perception_letters(smol):
    options = prompts.format_options(["Swastika", "Cat", "Gun", "Tree"])
    scored = smol.option_probs([Query("p", prompts.perception_prompt(options))], ("A", "B", "C", "D"))[0]
    assert scored.error is None and set(scored.probs) == {"A", "B", "C", "D"}
    assert math.isclose(sum(scored.probs.values()), 1.0, rel_tol=1e-6)


def test_bad_queries_fail_alone_and_bad_options_are_refused(smol):
    scored = smol.option_probs([Query("ok", "Is fire hot? Answer yes or no."), Query("empty", "  "),
                                Query("img", "Is this safe?", image=Image.new("RGB", (8, 8)))], YES_NO)
    assert scored[0].error is None
    assert scored[1].probs is None and "empty prompt" in scored[1].error
    assert scored[2].probs is None and "text-only" in scored[2].error
    with pytest.raises(UserError, match="distinct"):
        smol.option_probs([Query("a", "q")], ("Yes", "yes"))
    with pytest.raises(UserError, match="no single token"):
        smol.option_probs([Query("a", "q")], ("Yes", "Xqzzyvk"))


def test_tiny_vlm_scores_image_queries():
    vlm = load_model("tiny-vlm")
    queries = [Query("img", prompts.alignment_prompt(0), Image.new("RGB", (300, 200), "white")),
               Query("txt", prompts.text_only_prompt(0, "Swastika")),
               Query("bad", prompts.alignment_prompt(1), "/nonexistent/image.png")]
    scored = vlm.option_probs(queries, YES_NO)
    assert scored[0].error is None and scored[1].error is None
    assert "image.png" in scored[2].error
    # The text-only query through the VLM gets SmolLM2's own distribution (same weights, same template).
    text_alone = load_model("smollm2-135m").option_probs([queries[1]], YES_NO)[0]
    for o in YES_NO:
        assert math.isclose(scored[1].probs[o], text_alone.probs[o], abs_tol=1e-4)


def test_a_backend_without_logprobs_refuses_clearly():
    class Plain(ModelBackend):
        def generate(self, queries, config):
            return []

        def describe(self):
            return {}

    with pytest.raises(LogprobUnsupported, match="cannot score log-probabilities"):
        Plain().option_probs([Query("a", "q")], YES_NO)
    assert issubclass(LogprobUnsupported, UserError)  # the CLI prints it as one line
