import json

import pytest

from unsafe_concepts.errors import UserError
from unsafe_concepts.evalsets import load_llavabench, load_mme, load_nsfw, load_smid
from unsafe_concepts.evalsets.smid import binarise


def test_mme_tsv_resolves_image_references_and_pairs_questions(mme_tsv):
    items = load_mme(str(mme_tsv))
    assert len(items) == 8
    assert {i.category for i in items} == {"color", "code_reasoning"}
    assert [i.answer for i in items[:2]] == ["Yes", "No"]
    # the referencing row decodes to the same picture and shares the pairing key
    assert items[0].image_key == items[1].image_key != items[2].image_key
    assert items[1].load_image().getpixel((0, 0)) == (255, 0, 0)
    assert items[2].load_image().getpixel((0, 0))[2] > 250  # JPEG: near-exact


def test_mme_release_folder(tmp_path):
    from PIL import Image

    cat = tmp_path / "mme" / "existence"
    (cat / "images").mkdir(parents=True)
    (cat / "questions_answers_YN").mkdir()
    Image.new("RGB", (8, 8), "red").save(cat / "images" / "a.jpg")
    (cat / "questions_answers_YN" / "a.txt").write_text("Is there a square?\tYes\nIs there a dog?\tNo\n")
    flat = tmp_path / "mme" / "artwork"
    flat.mkdir()
    Image.new("RGB", (8, 8), "blue").save(flat / "b.png")
    (flat / "b.txt").write_text("Is it blue?\tYes\nIs it red?\tNo\n")
    items = load_mme(str(tmp_path / "mme"))
    assert [(i.category, i.answer) for i in items] == [("artwork", "Yes"), ("artwork", "No"),
                                                       ("existence", "Yes"), ("existence", "No")]
    assert items[2].load_image().size == (8, 8)


def test_mme_bad_inputs_name_the_problem(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tcategory\timage\tquestion\tanswer\n0\tcolor\tnot-base64!!\tq\tYes\n"
                   "1\tcolor\tnot-base64!!\tq\tMaybe\n")
    with pytest.raises(UserError, match=r"bad.tsv:3: answer must be Yes or No"):
        load_mme(str(bad))
    bad.write_text("index\tcategory\tquestion\tanswer\n0\tcolor\tq\tYes\n")
    with pytest.raises(UserError, match="missing column"):
        load_mme(str(bad))
    bad.write_text("index\tcategory\timage\tquestion\tanswer\n0\tcolor\t" + "x" * 80 + "\tq\tYes\n")
    with pytest.raises(UserError, match=r"bad.tsv:2: the image column is not a base64"):
        load_mme(str(bad))[0].load_image()
    with pytest.raises(UserError, match="not found"):
        load_mme(str(tmp_path / "nope.tsv"))


def test_llavabench_folder(llava_folder):
    items = load_llavabench(str(llava_folder))
    assert [i.category for i in items] == ["conv", "detail", "complex"]
    assert items[0].caption == "A plain red square." and items[2].reference_answer == "Reference answer 2."
    assert items[2].load_image().getpixel((0, 0))[2] > 250  # JPEG: near-exact


def test_llavabench_missing_reference_is_named(llava_folder):
    (llava_folder / "answers_gpt4.jsonl").write_text(json.dumps({"question_id": 0, "text": "x"}) + "\n")
    with pytest.raises(UserError, match=r"questions.jsonl:2: question 1 has no reference answer"):
        load_llavabench(str(llava_folder))


def test_llavabench_broken_line_is_named(llava_folder):
    with (llava_folder / "context.jsonl").open("a") as f:
        f.write('{"image": "x.jpg", "caption": \n')
    with pytest.raises(UserError, match=r"context.jsonl:\d+: not JSON"):
        load_llavabench(str(llava_folder))


def test_smid_binarises_with_a_neutral_band(smid_folder):
    items = load_smid(smid_folder)
    assert {i.id: i.label for i in items} == {"img_a": "unsafe", "img_b": "unsafe", "img_d": "safe",
                                              "img_e": "safe", "img_f": "safe"}
    assert items[0].image.endswith("img_a.jpg")
    balanced = load_smid(smid_folder, balanced=True)
    assert [i.label for i in balanced].count("safe") == [i.label for i in balanced].count("unsafe") == 2
    assert len(load_smid(smid_folder, unsafe_max=3.0, safe_min=3.0)) == 6
    assert binarise(3.2) is None


def test_smid_errors(smid_folder):
    (smid_folder / "SMID_images_400px" / "img" / "img_e.jpg").unlink()
    with pytest.raises(UserError, match=r"SMID_norms.csv:6: image 'img_e' not found"):
        load_smid(smid_folder)
    with pytest.raises(UserError, match="must not exceed"):
        load_smid(smid_folder, unsafe_max=4, safe_min=3)


def test_nsfw_folder_and_table(nsfw_folder, tmp_path):
    items = load_nsfw(str(nsfw_folder))
    assert [i.label for i in items] == ["safe"] * 2 + ["unsafe"] * 3
    table = nsfw_folder / "labels.csv"
    table.write_text("image,label\nsafe/0.png,SFW\nunsafe/1.png,nsfw\n")
    rows = load_nsfw(str(table))
    assert [(r.label, r.image.endswith("1.png")) for r in rows] == [("safe", False), ("unsafe", True)]
    table.write_text("image,label\nsafe/0.png,maybe\n")
    with pytest.raises(UserError, match=r"labels.csv:2: label must be one of"):
        load_nsfw(str(table))


def test_smid_and_nsfw_are_registered_tasks(smid_folder, nsfw_folder):
    from unsafe_concepts.tasks import TaskOptions, get_task

    smid = get_task("smid")
    samples = smid.build(smid.load_data(str(smid_folder)), TaskOptions(pairing="all"))
    assert smid.after_training and len(samples) == 5 * 5  # 5 images outside the neutral band x 5 prompts
    assert {s.label for s in samples} == {"safe", "unsafe"} and samples[0].image.endswith(".jpg")
    # the default is the reference's pairing: one prompt per image, numpy seed 42 in file order
    samples = smid.build(smid.load_data(str(smid_folder)), TaskOptions())
    assert [s.prompt_index for s in samples] == [3, 4, 2, 4, 4]
    nsfw = get_task("nsfw")
    samples = nsfw.build(nsfw.load_data(str(nsfw_folder)), TaskOptions(prompt_indices=(0,), pairing="all"))
    assert [s.label for s in samples] == ["safe"] * 2 + ["unsafe"] * 3 and samples[0].id == "safe/0.png#p0"
