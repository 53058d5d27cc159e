"""The four hub sets with the reference's exact schemas, served by the local Hub stand-in and loaded
through the ordinary code path (``datasets.load_dataset`` with HF_ENDPOINT pointing at it).

Schemas (the reference README): ``yiting/UnsafeConcepts`` image / category / unsafe_concept (split
train); ``yiting/imagenet_1k_unique_class`` image / concept / optional id (the file is named by id);
``yiting/SMID`` and ``yiting/NSFWDataset`` image as a base64 string, label (integer or string), index.
The images are flat-colour JPEG/PNG placeholders; the row counts of SMID (2,941) and NSFW (1,800)
are the real ones, so that the reference's 500-image subsets can be checked against its answer files.
"""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _hub_standin import publish, start
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from unsafe_concepts import paths
from unsafe_concepts.data import load_benchmark
from unsafe_concepts.data.reference_files import SHIPPED_PERCEPTION
from unsafe_concepts.prompts import ALIGNMENT_PROMPTS

N_UNSAFE, N_SAFE, N_SMID, N_NSFW = 12, 15, 2941, 1800
REFERENCE = paths.reference_dir()


def _jpeg_b64(colour) -> str:
    buf = io.BytesIO()
    PILImage.new("RGB", (2, 2), colour).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def _publish_all() -> None:
    # UnsafeConcepts: the first rows of the benchmark (concepts as in the shipped perception file)
    first = [json.loads(line) for line in SHIPPED_PERCEPTION.read_text().splitlines()[:N_UNSAFE]]
    publish("yiting/UnsafeConcepts", Dataset.from_dict(
        {"image": [PILImage.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(N_UNSAFE)],
         "category": [r["category"] for r in first], "unsafe_concept": [r["unsafe_concept"] for r in first]},
        features=Features({"image": Image(), "category": Value("string"), "unsafe_concept": Value("string")})))
    # safe images: ids that are NOT the row numbers, so that naming by id is visible
    publish("yiting/imagenet_1k_unique_class", Dataset.from_dict(
        {"image": [PILImage.new("RGB", (8, 8), (0, i * 10, 0)) for i in range(N_SAFE)],
         "concept": [f"class {i}, synonym" for i in range(N_SAFE)], "id": [100 + 3 * i for i in range(N_SAFE)]},
        features=Features({"image": Image(), "concept": Value("string"), "id": Value("int64")})))
    smid_image, nsfw_image = _jpeg_b64((200, 200, 200)), _jpeg_b64((90, 90, 90))
    publish("yiting/SMID", Dataset.from_dict(
        {"image": [smid_image] * N_SMID, "label": [i % 2 for i in range(N_SMID)], "index": list(range(N_SMID))}))
    publish("yiting/NSFWDataset", Dataset.from_dict(
        {"image": [nsfw_image] * N_NSFW, "label": ["nsfw"] * N_NSFW, "index": list(range(N_NSFW))}))


SCRIPT = """
import json, sys
from unsafe_concepts.cli import main
from unsafe_concepts.evalsets import load_nsfw, load_smid
out = sys.argv[1]
codes = [main(["data", "download", "--out", out + "/uc", "--safe"]),
         main(["data", "download", "--set", "smid", "--subset", "reference", "--out", out + "/smid"]),
         main(["data", "download", "--set", "nsfw", "--subset", "reference", "--out", out + "/nsfw"])]
smid = load_smid("hf")        # every row, converted once into the cache
nsfw = load_nsfw("hf", subset="reference")
print(json.dumps({"codes": codes, "smid": [len(smid), sorted({i.label for i in smid}), smid[7].id],
                  "nsfw": [len(nsfw), nsfw[0].id, nsfw[0].label]}))
"""


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    _publish_all()
    server, url = start()
    out = tmp_path_factory.mktemp("hub")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=url, HF_HOME=str(out / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               UNSAFE_CONCEPTS_HOME=str(out / "home"))
    try:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_unsafeconcepts_and_safe_images_with_real_schemas(downloaded):
    out, result = downloaded
    assert result["codes"] == [0, 0, 0]
    uc = out / "uc"
    safe_rows = [json.loads(line) for line in (uc / "safe/metadata.jsonl").read_text().splitlines()]
    # class column "concept"; the file is named by id and hub_index is that id (the reference's naming)
    assert [r["image_filename"] for r in safe_rows[:3]] == ["images/100.png", "images/103.png", "images/106.png"]
    assert [r["hub_index"] for r in safe_rows] == [100 + 3 * i for i in range(N_SAFE)]
    assert safe_rows[4]["class_name"] == "class 4, synonym"
    assert PILImage.open(uc / "safe/images/103.png").getpixel((0, 0)) == (0, 10, 0)
    # the files not on the hub were added from the package: the benchmark's option sets, not generated ones
    assert (uc / "context_questions.json").is_file() and (uc / "NOTICE.reference").is_file()
    assert len((uc / "perception_metadata.jsonl").read_text().splitlines()) == N_UNSAFE
    bench = load_benchmark(str(uc))
    assert bench.perception_source == "reference" and bench.describe()["perception_options"] == "reference"
    assert bench.context_source == "folder" and len(bench.context) == 75
    first = json.loads(SHIPPED_PERCEPTION.read_text().splitlines()[0])
    assert bench.perception["images/0.png"] == (first["option_str"], first["correct_option"])
    assert len(bench.safe) == len(bench.unsafe)


def test_smid_and_nsfw_hub_paths(downloaded):
    out, result = downloaded
    assert result["smid"] == [N_SMID, ["safe", "unsafe"], "7"]  # label 0/1 -> safe/unsafe, id = index
    assert result["nsfw"][0] == 500 and result["nsfw"][2] == "unsafe"
    rows = [json.loads(line) for line in (out / "smid/metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 500 and rows[0]["image_filename"].endswith(".jpg")
    assert (out / "smid" / rows[0]["image_filename"]).read_bytes()[:3] == b"\xff\xd8\xff"  # bytes kept as sent


@pytest.mark.skipif(REFERENCE is None, reason="reference answers not available")
@pytest.mark.parametrize("name,published", [("smid", "sft/SMID_result.json"), ("smid", "dpo/SMID_result.json"),
                                            ("nsfw", "sft/NSFW_result.json")])
def test_reference_subset_and_prompts_match_published_answers(downloaded, name, published):
    """Downloaded with --subset reference and asked with the default pairing, every row's image and
    prompt equal the reference's answer file, row by row."""
    from unsafe_concepts.tasks import TaskOptions, get_task

    out, _ = downloaded
    rows = json.loads((REFERENCE / "responses/llava-1.5-7b" / published).read_text())
    task = get_task(name)
    samples = task.build(task.load_data(str(out / name)), TaskOptions())
    assert [Path(s.image).name for s in samples] == [Path(r["image_fname"]).name for r in rows]
    assert [ALIGNMENT_PROMPTS[s.prompt_index] for s in samples] == [r["prompt"] for r in rows]
