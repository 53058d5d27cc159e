from collections import Counter

import pytest

from unsafe_concepts import prompts, taxonomy
from unsafe_concepts.data.records import ImageRecord
from unsafe_concepts.errors import UserError
from unsafe_concepts.train import data as td


def _records(n_unsafe_per_concept=4, n_safe=200):
    recs = []
    for concept in taxonomy.CONCEPTS[:10]:
        for j in range(n_unsafe_per_concept):
            split = "train" if j < n_unsafe_per_concept - 1 else "test"
            recs.append(ImageRecord(id=f"images/{concept}/{j}.png", image=f"/x/{concept}/{j}.png",
                                    category=taxonomy.category_of(concept), concept=concept, label="unsafe", split=split))
    for j in range(n_safe):
        recs.append(ImageRecord(id=f"safe/{j}.png", image=f"/s/{j}.png", category="Safe", concept=f"class {j}",
                                label="safe", split="train" if j % 5 else "test"))
    return recs


def test_build_items_balanced_one_prompt_per_image():
    items = td.build_items(_records(), modality="image", split="train")
    labels = Counter(it.label for it in items)
    assert labels["unsafe"] == labels["safe"] == 30
    ids = [it.id for it in items]
    assert len(ids) == len(set(ids))  # each image once, so exactly one prompt per image
    assert all(it.prompt in prompts.ALIGNMENT_PROMPTS for it in items)
    assert all(it.prompt == prompts.ALIGNMENT_PROMPTS[it.prompt_index] for it in items)
    assert {it.category for it in items if it.label == "safe"} == {"Safe"}
    # prompts are drawn at random: several of the five appear
    assert len({it.prompt_index for it in items}) >= 3


def test_build_items_deterministic_and_seed_sensitive():
    a = td.build_items(_records(), split="train", seed=2024)
    b = td.build_items(_records(), split="train", seed=2024)
    c = td.build_items(_records(), split="train", seed=7)
    assert a == b
    assert [(x.id, x.prompt) for x in a] != [(x.id, x.prompt) for x in c]


def test_build_items_test_split_and_text_modality():
    items = td.build_items(_records(), modality="text", split="test")
    assert Counter(it.label for it in items) == {"unsafe": 10, "safe": 10}
    for it in items:
        assert it.image is None
        assert it.prompt == prompts.text_only_prompt(it.prompt_index, it.concept)


def test_build_items_errors():
    with pytest.raises(UserError, match="safe"):
        td.build_items([r for r in _records() if r.label == "unsafe"])
    with pytest.raises(UserError, match="modality"):
        td.build_items(_records(), modality="audio")


def test_heldout_concept_split_stratified_disjoint_deterministic():
    train, test = td.heldout_concept_split()
    assert set(train) | set(test) == set(taxonomy.CONCEPTS) and not set(train) & set(test)
    assert 15 <= len(test) <= 23  # about a quarter of 75
    assert {taxonomy.category_of(c) for c in test} == set(taxonomy.CATEGORIES)
    assert td.heldout_concept_split() == (train, test)
    assert td.heldout_concept_split(seed=1) != (train, test)
    s_train, s_test = td.heldout_safe_split()
    assert not set(s_train) & set(s_test)
    assert abs(len(s_test) - 0.25 * len(td.safe_class_names())) <= 1


def test_safe_class_names_resource():
    names = td.safe_class_names()
    assert len(names) >= 200 and len(names) == len(set(names))
    assert "golden retriever" in names
    assert not set(names) & set(taxonomy.CONCEPTS)


def test_text_items_templates_and_balance():
    items = td.text_items(["Torture", "Arson"], ["golden retriever", "teapot", "canoe"], seed=3)
    assert Counter(it.label for it in items) == {"unsafe": 10, "safe": 10}  # 2 names x 5 prompts each side
    dog = [it for it in items if it.concept == "golden retriever"]
    for it in items:
        assert it.prompt == prompts.text_only_prompt(it.prompt_index, it.concept)
    if dog:
        assert dog[0].prompt.startswith("If an image shows golden retriever, ")
    one = td.text_items(["Torture"], ["teapot"], seed=3, all_prompts=False)
    assert len(one) == 2
    with pytest.raises(UserError, match="unknown concept"):
        td.text_items(["Not a concept"], ["teapot"])


def test_heldout_text_items_disjoint():
    train = td.heldout_text_items("train")
    test = td.heldout_text_items("test")
    assert not {it.concept for it in train} & {it.concept for it in test}
    assert Counter(it.label for it in test)["safe"] == Counter(it.label for it in test)["unsafe"]


def test_sft_and_dpo_targets():
    items = [td.TrainItem("a", "q?", None, "unsafe", "Torture", "Violence"),
             td.TrainItem("b", "q?", "/img.png", "safe", "golden retriever", "Safe")]
    sft = td.sft_examples(items)
    assert sft[0] == {"prompt": "q?", "image": None, "completion": prompts.sft_target("unsafe", "Torture")}
    assert sft[1]["completion"] == "Yes. The image shows golden retriever, which is considered harmless."
    pairs = td.dpo_pairs(items)
    assert pairs[0]["chosen"].startswith("No.") and pairs[0]["rejected"].startswith("Yes.")
    assert pairs[1]["chosen"].startswith("Yes.") and pairs[1]["rejected"].startswith("No.")
    assert pairs[1]["image"] == "/img.png"
