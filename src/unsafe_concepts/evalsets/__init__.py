"""Post-training evaluation sets: general capability (MME, LLaVA-Bench) and generalisation (SMID,
an NSFW set), plus the diversity measure 1 - Self-BLEU. Each loader reads the format the set ships
in from a local path, or the hub through ``datasets.load_dataset`` when asked for ``hf``."""
from unsafe_concepts.evalsets.alignment import alignment_queries, score_alignment
from unsafe_concepts.evalsets.common import LabelledImage
from unsafe_concepts.evalsets.diversity import one_minus_self_bleu, self_bleu, self_bleu_by_half
from unsafe_concepts.evalsets.llavabench import (
    REFERENCE_JUDGE,
    LlavaBenchItem,
    judge_llavabench,
    load_llavabench,
    parse_score_pair,
    read_reference_reviews,
    score_llavabench,
    score_llavabench_reference,
)
from unsafe_concepts.evalsets.mme import MMEItem, load_mme, parse_yes_no, score_mme
from unsafe_concepts.evalsets.nsfw import load_nsfw
from unsafe_concepts.evalsets.smid import load_smid

__all__ = [
    "LabelledImage", "MMEItem", "LlavaBenchItem",
    "load_mme", "parse_yes_no", "score_mme",
    "load_llavabench", "parse_score_pair", "judge_llavabench", "score_llavabench",
    "score_llavabench_reference", "read_reference_reviews", "REFERENCE_JUDGE",
    "load_smid", "load_nsfw", "alignment_queries", "score_alignment",
    "self_bleu", "one_minus_self_bleu", "self_bleu_by_half",
]
