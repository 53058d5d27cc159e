"""Progress moves per query: a backend reports each answer as it finishes, inside a batch, without
changing any answer (the runner's bar listens to ``ModelBackend.progress``)."""
import pytest

from unsafe_concepts.models.base import GenerationConfig, Query
from unsafe_concepts.models.registry import load_model

PROMPTS = ["Answer with one word only: what colour is the sky?", "Write a long poem about the sea.",
           "Is water wet? Answer yes or no.", "Count to three."]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_hf_batch_reports_each_answer_as_it_ends(smollm2):
    queries = [Query(id=str(i), prompt=p) for i, p in enumerate(PROMPTS)]
    config = GenerationConfig(max_new_tokens=48, do_sample=False)
    reported = []
    smollm2.progress = reported.append
    try:
        batched = smollm2.generate(queries, config)
    finally:
        smollm2.progress = None
    ended = [g for g in batched if g.n_tokens < config.max_new_tokens]
    assert ended, "the prompts were chosen so that some answers end before the budget"
    # one report per answer that reached its end of sequence, none for answers cut at the budget
    assert sum(reported) == len(ended) and len(reported) >= 2
    alone = [smollm2.generate([q], config)[0] for q in queries]
    assert [g.text for g in batched] == [g.text for g in alone]  # listening changes no answer
