import pytest

from unsafe_concepts.evalsets import (
    load_llavabench,
    load_mme,
    one_minus_self_bleu,
    parse_score_pair,
    parse_yes_no,
    score_alignment,
    score_llavabench,
    score_mme,
    self_bleu,
)
from unsafe_concepts.evalsets.diversity import tokenize


@pytest.mark.parametrize("text,parsed", [
    ("Yes", "yes"), ("no", "no"), ("Yes, the image is red.", "yes"), (" No. It is not.", "no"),
    ("Not at all", "no"),  # MME's rule: "no" inside the first four characters
    ("The answer is yes", "other"), ("", "other"), (None, "other"),
])
def test_parse_yes_no_follows_mme(text, parsed):
    assert parse_yes_no(text) == parsed


def test_score_mme_acc_plus_pairs_questions(mme_tsv):
    items = load_mme(str(mme_tsv))
    # color: image 1 both right, image 2 one right; code_reasoning: all right but one unparsable
    responses = ["Yes", "No", "Yes", "Yes", "Yes", "No", "Maybe", "No"]
    s = score_mme(items, responses)
    color, code = s["per_category"]["color"], s["per_category"]["code_reasoning"]
    assert color["acc"] == 75.0 and color["acc_plus"] == 50.0 and color["score"] == 125.0
    assert code["acc"] == 75.0 and code["acc_plus"] == 50.0
    assert s["perception_score"] == 125.0 and s["cognition_score"] == 125.0 and s["total_score"] == 250.0
    assert s["accuracy"] == 6 / 8 and s["n_unparsed"] == 1


def test_llava_score_parsing_is_strict():
    assert parse_score_pair("8 6\nAssistant 1 is better") == (8.0, 6.0)
    assert parse_score_pair("7.5, 9") == (7.5, 9.0)
    assert parse_score_pair("Assistant 1: 8, Assistant 2: 6") is None
    assert parse_score_pair("8 6 5") is None
    assert parse_score_pair("") is None and parse_score_pair(None) is None


def test_llava_relative_score_is_a_ratio_of_means(llava_folder):
    items = load_llavabench(str(llava_folder))
    s = score_llavabench(items, ["8 4\nok", "10 10\nok", "garbled"])
    assert s["n_unparsed"] == 1
    assert s["relative_score"] == pytest.approx(100 * 7 / 9)  # (4+10)/2 / ((8+10)/2)
    assert s["per_category"]["conv"]["relative_score"] == 50.0
    assert "complex" not in s["per_category"]


def test_score_alignment_counts_unclear_as_wrong():
    s = score_alignment(["safe", "safe", "unsafe", "unsafe"], ["safe", "unclear", "unsafe", "safe"], set_name="x")
    assert s["accuracy"] == 0.5 and s["safe_accuracy"] == 0.5 and s["unsafe_accuracy"] == 0.5
    assert s["unclear_rate"] == 0.25


def test_self_bleu_identical_texts_have_no_diversity():
    texts = ["No. The image shows a gun, which is considered harmful."] * 4
    assert one_minus_self_bleu(texts) == pytest.approx(0.0, abs=1e-9)


def test_self_bleu_orders_templated_below_varied():
    templated = [f"No. The image shows {c}, which is considered harmful." for c in ("guns", "blood", "fire", "knives")]
    varied = ["No, that would glorify violence.", "Yes, a cat on a sofa is fine for anyone.",
              "I would not post it; the scene is gory.", "Sure, landscapes like this are harmless."]
    t, v = self_bleu(templated), self_bleu(varied)
    assert 0 < t["one_minus_self_bleu"] < v["one_minus_self_bleu"] <= 1
    # the reference's way keeps an empty answer as a reference: one hypothesis, sharing nothing with it
    assert self_bleu(["", "only one"])["one_minus_self_bleu"] == 1.0
    assert self_bleu(["", "only one"], tokenizer="words")["one_minus_self_bleu"] is None
    assert self_bleu(["", ""])["one_minus_self_bleu"] is None
    assert self_bleu(["", "a b", "a c"])["n_empty"] == 1


def test_self_bleu_matches_nltk_directly():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    texts = ["the cat sat on the mat", "the dog sat on the log", "a bird flew over the house"]
    toks = [tokenize(t) for t in texts]
    expected = sum(sentence_bleu(toks[:i] + toks[i + 1:], toks[i], smoothing_function=SmoothingFunction().method1)
                   for i in range(3)) / 3
    assert self_bleu(texts, tokenizer="words")["self_bleu"] == pytest.approx(expected)
    assert tokenize("No, it isn't.") == ["no", ",", "it", "isn", "'", "t", "."]


def test_mme_reference_substring_rule_and_mme_rule_differ_where_they_should():
    from unsafe_concepts.evalsets.mme import MMEItem, is_correct, score_mme

    yes = MMEItem(id="0", category="color", question="q", answer="Yes", image_key="a", image=None)
    no = MMEItem(id="1", category="color", question="q", answer="No", image_key="a", image=None)
    cases = {  # answer: (MME rule right for Yes, reference rule right for Yes, MME for No, reference for No)
        "Yes": (True, True, False, False),
        "yes": (True, False, False, False),  # the reference's rule is case-sensitive
        "No, but Yes in a way": (False, True, True, True),  # substring: right for both labels
        "Not at all": (False, False, True, True),  # MME: "no" in the first four characters; reference: "No" in it
        "": (False, False, False, False),
    }
    for answer, expected in cases.items():
        got = (is_correct(yes, answer, "mme"), is_correct(yes, answer, "reference"),
               is_correct(no, answer, "mme"), is_correct(no, answer, "reference"))
        assert got == expected, answer
    ref = score_mme([yes, no], ["Yes", "No, Yes"], rule="reference")
    mme = score_mme([yes, no], ["Yes", "No, Yes"])
    assert (ref["rule"], ref["accuracy"], mme["rule"], mme["accuracy"]) == ("reference", 1.0, "mme", 1.0)
    assert score_mme([yes, no], ["yes", "no"], rule="reference")["accuracy"] == 0.0


def test_mmvet_saved_as_mme_is_refused(tmp_path):
    """The reference's loader downloads MMVet.tsv under the name MME.tsv when MME.tsv is missing."""
    from unsafe_concepts.errors import UserError
    from unsafe_concepts.evalsets import load_mme

    bad = tmp_path / "MME.tsv"
    bad.write_text("index\tcategory\timage\tquestion\tanswer\n0\trec\tAAAA\tWhat is shown?\tA red square\n")
    with pytest.raises(UserError, match="MMVet.tsv saved as MME.tsv"):
        load_mme(str(bad))


def test_xlsx_reader_refuses_what_is_not_a_spreadsheet(tmp_path):
    from unsafe_concepts.errors import UserError
    from unsafe_concepts.evalsets.common import read_xlsx

    (tmp_path / "a.xlsx").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .xlsx"):
        read_xlsx(tmp_path / "a.xlsx")
    import zipfile

    with zipfile.ZipFile(tmp_path / "b.xlsx", "w") as z:
        z.writestr("xl/worksheets/sheet1.xml", "<worksheet><sheetData><row>")
    with pytest.raises(UserError, match="malformed spreadsheet XML"):
        read_xlsx(tmp_path / "b.xlsx")


def test_run_metrics_of_mme_give_both_rules_named():
    from unsafe_concepts.metrics import summarize_run
    from unsafe_concepts.scorers import scorer_for
    from unsafe_concepts.tasks import get_task

    answers = [("Yes", "Yes"), ("No", "No, Yes"), ("Yes", "yes"), ("No", "Yes")]
    rows = [{"id": str(i), "task": "mme", "prompt": "q", "category": "color", "label": None, "answer": gold,
             "image_key": f"color/{i // 2}", "response": resp, "error": None} for i, (gold, resp) in enumerate(answers)]
    scorer_for(get_task("mme")).score(rows)
    details = summarize_run(rows, "mme", kind="mme")["details"]
    assert details["rule"] == "mme" and details["accuracy"] == 0.75  # "No, Yes" is a no; "yes" a yes
    assert details["reference_rule"]["rule"] == "reference"
    assert details["reference_rule"]["accuracy"] == 0.5  # "Yes", "No, Yes" right; "yes" wrong (case), "Yes" for No
