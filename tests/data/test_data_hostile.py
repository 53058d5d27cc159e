"""Hostile and careless data: a decompression bomb, a 5,000-character image path, an empty
metadata file, fields of the wrong type. Each gives one clear message naming the problem (no
traceback), and a bad image fails only its own row of a run."""
from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from _data_helpers import make_dataset, write_jsonl, write_png

from unsafe_concepts.data import load_benchmark, load_rgb
from unsafe_concepts.data.validate import check_folder
from unsafe_concepts.errors import UserError


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A valid 1-bit PNG whose header claims side x side pixels (900 megapixels for 30000): PIL refuses it
    at open time (DecompressionBombError), so the file can stay a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)  # far too little data: PIL never gets as far as reading it
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unsafe_concepts", *args], capture_output=True, text=True,
                          timeout=120)


def test_decompression_bomb_is_a_bad_image_not_a_crash(tmp_path):
    root = make_dataset(tmp_path / "ds", {"Arson": 5})
    bomb_png(root / "images" / "2.png")
    with pytest.raises(UserError, match="images/2.png.*decompression bomb"):
        load_rgb(root / "images" / "2.png", "images/2.png")
    bench = load_benchmark(str(root))  # loading does not decode: the run fails that one row instead
    bad = next(r for r in bench.unsafe if r.id == "images/2.png")
    with pytest.raises(UserError, match="decompression bomb"):
        bad.load_image()
    assert all(r.load_image().size == (16, 16) for r in bench.unsafe if r.id != "images/2.png")
    report = check_folder(root)
    assert [p for p in report.problems.items if "decompression bomb" in p and "images/2.png" in p]
    assert len(report.problems) == 1


def test_decompression_bomb_in_base64_and_hub_bytes(tmp_path):
    from unsafe_concepts.evalsets.common import as_pil, decode_base64_image

    raw = bomb_png(tmp_path / "b.png").read_bytes()
    with pytest.raises(UserError, match="row 7: image refused as a possible decompression bomb"):
        decode_base64_image(base64.b64encode(raw).decode(), "row 7")
    with pytest.raises(UserError, match="hub row: image refused"):
        as_pil({"bytes": raw, "path": None}, "hub row")


def test_five_thousand_character_image_path(tmp_path):
    root = make_dataset(tmp_path / "ds", {"Arson": 3})
    long_name = "images/" + "x" * 5000 + ".png"
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    rows[1]["image_filename"] = long_name
    write_jsonl(root / "metadata.jsonl", rows)
    with pytest.raises(UserError) as info:
        load_benchmark(str(root))
    message = str(info.value)
    assert "File name too long" in message and "characters" in message and len(message) < 1500
    with pytest.raises(UserError, match=r"image path too long for the file system \(\d+ characters\)"):
        load_rgb(str(root / long_name), "row 1")
    proc = _cli("data", "check", str(root))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "File name too long" in proc.stderr and len(proc.stderr) < 3000


def test_data_check_on_an_empty_metadata_file_is_an_error(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "metadata.jsonl").write_text("")
    proc = _cli("data", "check", str(tmp_path / "ds"))
    assert proc.returncode == 2 and "OK" not in proc.stdout and "Traceback" not in proc.stderr
    assert "lists no images" in proc.stderr
    with pytest.raises(UserError, match="lists no images"):
        load_benchmark(str(tmp_path / "ds"))
    safe = tmp_path / "safe"
    safe.mkdir()
    (safe / "metadata.jsonl").write_text("\n\n")
    assert not check_folder(safe).ok


def test_wrong_field_types_are_named_as_such(tmp_path):
    root = make_dataset(tmp_path / "ds", {"Arson": 2})
    write_jsonl(root / "metadata.jsonl", [
        {"image_filename": 5, "category": "Illegal activity", "unsafe_concept": "Arson"},
        {"image_filename": "images/1.png", "category": ["Illegal activity"], "unsafe_concept": "Arson"},
        {"image_filename": "images/1.png", "category": "Illegal activity"},
        {"image_filename": "  ", "category": "Illegal activity", "unsafe_concept": "Arson"},
    ])
    problems = check_folder(root).problems.items
    assert problems == [
        "metadata.jsonl line 1: wrong type: 'image_filename' must be a string, got int 5",
        "metadata.jsonl line 2: wrong type: 'category' must be a string, got list [\"Illegal activity\"]",
        "metadata.jsonl line 3: missing field(s) 'unsafe_concept'",
        "metadata.jsonl line 4: empty field(s) 'image_filename'",
    ]


def test_data_check_reads_a_labelled_set_folder(tmp_path):
    """`data check` on a SMID/NSFW folder as `data download --set` writes it: counts per label, bad images named."""
    root = tmp_path / "smid"
    for i in range(3):
        write_png(root / "images" / f"{i}.png")
    bomb_png(root / "images" / "3.png")
    write_jsonl(root / "metadata.jsonl", [{"image_filename": f"images/{i}.png", "label": ["safe", "unsafe"][i % 2],
                                           "index": i} for i in range(4)])
    report = check_folder(root)
    assert report.kind == "labelled" and dict(report.labels) == {"safe": 2, "unsafe": 2}
    assert len(report.problems) == 1 and "decompression bomb" in report.problems.items[0]


def test_hub_download_keeps_an_undecodable_image_for_its_row_to_fail(tmp_path, capsys):
    """A hub row whose image does not decode (here: JPEG magic, then garbage) does not stop the download:
    its bytes are kept under their own suffix, and that one row fails when asked."""
    from datasets import Dataset, Features, Image, Value

    from unsafe_concepts.data.hub import unsafe_dataset_to_layout

    good = (tmp_path / "g.png")
    write_png(good)
    ds = Dataset.from_dict(
        {"image": [{"bytes": good.read_bytes(), "path": None}, {"bytes": b"\xff\xd8\xff" + b"\x00" * 40, "path": None}],
         "category": ["Illegal activity"] * 2, "unsafe_concept": ["Arson"] * 2},
        features=Features({"image": Image(), "category": Value("string"), "unsafe_concept": Value("string")}))
    out = tmp_path / "uc"
    assert unsafe_dataset_to_layout(ds, out) == 2
    assert "row 1: the image cannot be decoded" in capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["image_filename"] for r in rows] == ["images/0.png", "images/1.jpg"]
    bench = load_benchmark(str(out))
    bad = next(r for r in bench.unsafe if r.id == "images/1.jpg")
    with pytest.raises(UserError, match="unreadable or truncated image"):
        bad.load_image()
    assert unsafe_dataset_to_layout(ds, out) == 2  # resumable: the kept file is found again
