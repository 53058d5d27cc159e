"""The hub path: conversion of a datasets.Dataset into the layout, and access errors -> clear UserErrors.

Nothing here contacts huggingface.co: conversions use in-memory datasets, access errors come from a
real local HTTP server standing in for the Hub (HF_ENDPOINT) and from HF_HUB_OFFLINE=1."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage

from unsafe_concepts.data import load_benchmark
from unsafe_concepts.data.hub import safe_dataset_to_layout, unsafe_dataset_to_layout
from unsafe_concepts.errors import UserError

TOKEN = "hf_testtokenTESTTOKEN0123456789"


def _pil(colour, fmt="PNG"):
    im = PILImage.new("RGB", (12, 12), colour)
    if fmt == "PNG":
        return im
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    buf.seek(0)
    return PILImage.open(buf)


def test_unsafe_dataset_with_image_feature_to_layout(tmp_path):
    concepts = ["Arson"] * 5 + ["Graffiti"] * 5
    ds = Dataset.from_dict(
        {"image": [_pil((i * 20, 10, 10)) for i in range(10)],
         "category": ["Illegal activity"] * 10, "unsafe_concept": concepts},
        features=Features({"image": Image(), "category": Value("string"), "unsafe_concept": Value("string")}),
    )
    out = tmp_path / "uc"
    assert unsafe_dataset_to_layout(ds, out) == 10
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert rows[3] == {"image_filename": "images/3.png", "category": "Illegal activity", "unsafe_concept": "Arson"}
    assert PILImage.open(out / "images/3.png").getpixel((0, 0)) == (60, 10, 10)
    bench = load_benchmark(str(out))
    assert Counter(r.split for r in bench.unsafe) == {"train": 8, "test": 2}
    # resumable: a second run rewrites the metadata but keeps the images already written
    stamp = (out / "images/0.png").stat().st_mtime_ns
    assert unsafe_dataset_to_layout(ds, out) == 10 and (out / "images/0.png").stat().st_mtime_ns == stamp


def test_class_label_concepts_filenames_and_jpeg_are_handled(tmp_path):
    names = ["Arson", "Torture"]
    ds = Dataset.from_dict(
        {"img": [_pil((200, 0, 0), "JPEG"), _pil((0, 0, 200), "JPEG")], "label": [0, 1],
         "image_filename": ["images/a.jpg", "b.png"]},
        features=Features({"img": Image(), "label": ClassLabel(names=names), "image_filename": Value("string")}),
    )
    out = tmp_path / "uc"
    unsafe_dataset_to_layout(ds, out)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert rows == [
        {"image_filename": "images/a.png", "category": "Illegal activity", "unsafe_concept": "Arson"},
        {"image_filename": "images/b.png", "category": "Violence", "unsafe_concept": "Torture"},
    ]
    assert PILImage.open(out / "images/a.png").format == "PNG"


def test_unknown_columns_are_named(tmp_path):
    ds = Dataset.from_dict({"picture_data": [b"x"], "tag": ["y"]})
    with pytest.raises(UserError, match=r"no image column: columns found are \['picture_data', 'tag'\]"):
        unsafe_dataset_to_layout(ds, tmp_path / "a")
    ds = Dataset.from_dict({"image": [_pil((1, 2, 3))], "tag": ["y"]}, features=Features({"image": Image(),
                                                                                         "tag": Value("string")}))
    with pytest.raises(UserError, match=r"concept column: columns found are \['image', 'tag'\]"):
        unsafe_dataset_to_layout(ds, tmp_path / "b")
    with pytest.raises(UserError, match=r"class-name column .* columns found are \['image', 'tag'\]"):
        safe_dataset_to_layout(ds, tmp_path / "c")
    ds = Dataset.from_dict({"image": [_pil((1, 2, 3))], "unsafe_concept": ["Dragons"]},
                           features=Features({"image": Image(), "unsafe_concept": Value("string")}))
    with pytest.raises(UserError, match="row 0: unknown concept 'Dragons'"):
        unsafe_dataset_to_layout(ds, tmp_path / "d")


def test_safe_dataset_to_layout_keeps_hub_index(tmp_path):
    ds = Dataset.from_dict({"image": [_pil((i, i, i)) for i in range(6)], "label": [0, 1, 2, 0, 1, 2]},
                           features=Features({"image": Image(),
                                              "label": ClassLabel(names=["tench", "goldfish", "tabby cat"])}))
    out = tmp_path / "uc" / "safe"
    assert safe_dataset_to_layout(ds, out) == 6
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["hub_index"] for r in rows] == list(range(6)) and rows[2]["class_name"] == "tabby cat"
    from _data_helpers import make_dataset

    make_dataset(tmp_path / "uc", {"Arson": 5})
    bench = load_benchmark(str(tmp_path / "uc"))
    assert Counter(r.split for r in bench.safe) == {"train": 4, "test": 1}
    assert {r.concept for r in bench.safe} <= {"tench", "goldfish", "tabby cat"}


# ------------------------------------------------------------------ access errors
@pytest.fixture(scope="module")
def fake_hub():
    """The local Hub stand-in (tests/data/_hub_standin.py): gated401/gated403/missing repos refuse access."""
    from _hub_standin import start

    server, url = start()
    yield url
    server.shutdown()


SCRIPT = """
import json, os
from unsafe_concepts.data.hub import load_hub_dataset
from unsafe_concepts.errors import UserError
out = {}
for repo, token in [("gated401/ds", None), ("gated403/ds", "@TOKEN@"), ("missing/ds", "@TOKEN@"), ("missing/ds", None)]:
    os.environ.pop("HF_TOKEN", None)
    if token:
        os.environ["HF_TOKEN"] = token
    try:
        load_hub_dataset(repo)
        out[repo + str(bool(token))] = "no error"
    except UserError as e:
        out[repo + str(bool(token))] = str(e)
print(json.dumps(out))
""".replace("@TOKEN@", TOKEN)


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def test_access_errors_say_what_to_do(fake_hub, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=_env(tmp_path, HF_ENDPOINT=fake_hub),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    msgs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "gated dataset" in msgs["gated401/dsFalse"] and "no token found" in msgs["gated401/dsFalse"]
    assert "hf auth login" in msgs["gated401/dsFalse"]
    assert "has not been granted access" in msgs["gated403/dsTrue"]
    assert "https://huggingface.co/datasets/gated403/ds" in msgs["gated403/dsTrue"]
    assert "not found on the Hub or your account cannot access it" in msgs["missing/dsTrue"]
    assert "you are not logged in" in msgs["missing/dsFalse"]
    assert TOKEN not in proc.stdout + proc.stderr


def test_cli_download_offline_is_a_clear_error_without_the_token(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "unsafe_concepts", "data", "download", "--out", str(tmp_path / "o")],
                          env=_env(tmp_path, HF_HUB_OFFLINE="1", HF_TOKEN=TOKEN), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot download yiting/UnsafeConcepts: offline mode is on")
    assert "--data sample" in proc.stderr and "Traceback" not in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
