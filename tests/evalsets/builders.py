"""Builders of tiny evaluation-set fixtures: flat-colour PNGs only (never unsafe imagery).

Plain functions (not fixtures) so that tests elsewhere (tests/train/test_posteval.py) can use them."""
from __future__ import annotations

import base64
import io
import json

from PIL import Image


def png(color, size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, color)


def png_b64(color) -> str:
    buf = io.BytesIO()
    png(color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def build_mme_tsv(tmp_path):
    """Two categories, 2 images each, 2 questions per image; the second question of each image
    refers to the first row's image by index, as VLMEvalKit's MME.tsv does."""
    rows = ["index\tcategory\timage\tquestion\tanswer"]
    idx = 0
    for cat, colors in (("color", ["red", "blue"]), ("code_reasoning", ["green", "white"])):
        for color in colors:
            first = idx
            rows.append(f"{idx}\t{cat}\t{png_b64(color)}\tIs the image {color}? Please answer yes or no.\tYes")
            idx += 1
            rows.append(f"{idx}\t{cat}\t{first}\tIs the image black? Please answer yes or no.\tNo")
            idx += 1
    path = tmp_path / "MME.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def build_llava_folder(tmp_path):
    root = tmp_path / "llava-bench"
    (root / "images").mkdir(parents=True)
    png("red").save(root / "images" / "001.jpg")
    png("blue").save(root / "images" / "002.jpg")
    qs = [{"question_id": 0, "image": "001.jpg", "text": "What colour is it?", "category": "conv"},
          {"question_id": 1, "image": "001.jpg", "text": "Describe the image.", "category": "detail"},
          {"question_id": 2, "image": "002.jpg", "text": "Why might it be blue?", "category": "complex"}]
    ans = [{"question_id": q["question_id"], "text": f"Reference answer {q['question_id']}."} for q in qs]
    ctx = [{"id": "1", "image": "001.jpg", "caption": "A plain red square."},
           {"id": "2", "image": "002.jpg", "caption": "A plain blue square."}]
    for name, rows in (("questions.jsonl", qs), ("answers_gpt4.jsonl", ans), ("context.jsonl", ctx)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def build_smid_folder(tmp_path):
    root = tmp_path / "smid"
    img = root / "SMID_images_400px" / "img"
    img.mkdir(parents=True)
    ratings = {"img_a": 1.8, "img_b": 2.5, "img_c": 3.0, "img_d": 3.5, "img_e": 4.6, "img_f": 4.1}
    lines = ["img_name,valence_mean,moral_mean,moral_sd"]
    for i, (name, m) in enumerate(ratings.items()):
        png((40 * i, 100, 100)).save(img / f"{name}.jpg")
        lines.append(f"{name},3.0,{m},0.9")
    (root / "SMID_norms.csv").write_text("\n".join(lines) + "\n")
    return root


def build_nsfw_folder(tmp_path):
    """Synthetic placeholders only: the 'unsafe' folder holds grey squares standing in for labels."""
    root = tmp_path / "nsfw"
    for label, n in (("safe", 2), ("unsafe", 3)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            png((90 + i, 90, 90)).save(root / label / f"{i}.png")
    return root
