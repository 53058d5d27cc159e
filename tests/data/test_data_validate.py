"""Bad input: `data check` names every problem (row + what), loaders refuse escaping paths."""
from __future__ import annotations

import json
import os

import pytest
from _data_helpers import make_dataset, write_jsonl, write_png

from unsafe_concepts.cli import main
from unsafe_concepts.data import load_benchmark
from unsafe_concepts.data.validate import check_folder
from unsafe_concepts.errors import UserError


def _bad_folder(tmp_path):
    root = tmp_path / "bad"
    outside = write_png(tmp_path / "outside.png")
    write_png(root / "images" / "ok.png")
    write_png(root / "images" / "trunc.png", size=(64, 64))
    data = (root / "images" / "trunc.png").read_bytes()
    (root / "images" / "trunc.png").write_bytes(data[: len(data) // 2])
    (root / "images" / "garbage.png").write_bytes(b"this is not an image")
    os.symlink(outside, root / "images" / "link.png")
    row = lambda f, cat="Hate", concept="Swastika": {"image_filename": f, "category": cat, "unsafe_concept": concept}
    write_jsonl(root / "metadata.jsonl", [
        row("images/ok.png"),                                   # 1 fine
        row("images/trunc.png"),                                # 2 truncated
        row("images/garbage.png"),                              # 3 unreadable
        row("images/missing.png"),                              # 4 missing
        row("images/link.png"),                                 # 5 symlink outside
        row(str(outside)),                                      # 6 absolute
        row("images/../../outside.png"),                        # 7 ..
        row("images/ok.png"),                                   # 8 duplicate id
        row("images/ok2.png", concept="Dragons"),               # 9 unknown concept
        row("images/ok3.png", cat="Violence"),                  # 10 wrong category
        row("images/ok4.png", cat="Nonsense"),                  # 11 unknown category
        '{"image_filename": "images/x.png", "category": ',      # 12 malformed JSON
        {"image_filename": "images/y.png", "category": "Hate"},  # 13 missing field
        "[1, 2]",                                               # 14 not an object
    ])
    return root


def test_check_reports_every_problem_with_row_and_reason(tmp_path):
    report = check_folder(_bad_folder(tmp_path))
    problems = "\n".join(report.problems.items)
    expected = {
        2: "trunc.png: unreadable or truncated image",
        3: "garbage.png: unreadable or truncated image",
        4: "image file not found",
        5: "resolves outside the dataset root (symlink",
        6: "absolute image path",
        7: "contains '..'",
        8: "duplicate id: 'images/ok.png' already on line 1",
        9: "unknown concept 'Dragons'",
        10: "concept 'Swastika' is filed under 'Violence', but belongs to 'Hate'",
        11: "unknown category 'Nonsense'",
        12: "not JSON",
        13: "missing field(s) 'unsafe_concept'",
        14: "a JSON list, not an object",
    }
    for line, what in expected.items():
        assert any(p.startswith(f"metadata.jsonl line {line}") and what in p for p in report.problems.items), \
            (line, what, problems)
    assert len(report.problems) == len(expected)  # all of them, and nothing about the good row


def test_cli_check_exits_nonzero_and_lists_problems(tmp_path, capsys):
    assert main(["data", "check", str(_bad_folder(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "13 problem(s)" in err and "Traceback" not in err
    assert "metadata.jsonl line 5 (images/link.png)" in err


def test_cli_check_counts_a_good_folder(small_dataset, capsys):
    assert main(["data", "check", str(small_dataset)]) == 0
    out = capsys.readouterr().out
    assert "Hate" in out and "total" in out and " 20  unsafe images" in out
    assert "safe images: 30 (7 classes)" in out and "OK: no problems found" in out


def test_loader_refuses_escaping_paths(tmp_path):
    root = make_dataset(tmp_path / "ds", {"Arson": 3})
    outside = write_png(tmp_path / "secret.png")
    os.symlink(outside, root / "images" / "evil.png")
    with (root / "metadata.jsonl").open("a") as f:
        f.write(json.dumps({"image_filename": "images/evil.png", "category": "Illegal activity",
                            "unsafe_concept": "Arson"}) + "\n")
        f.write(json.dumps({"image_filename": "../secret.png", "category": "Illegal activity",
                            "unsafe_concept": "Arson"}) + "\n")
    with pytest.raises(UserError) as e:
        load_benchmark(str(root))
    assert "2 problem(s)" in str(e.value) and "symlink" in str(e.value) and "'..'" in str(e.value)


def test_safe_folder_problems_and_class_folder_layout(tmp_path):
    safe = tmp_path / "safe"
    write_png(safe / "tabby cat" / "a.png")
    write_png(safe / "tabby cat" / "b.jpg")
    (safe / "goldfish").mkdir()
    (safe / "goldfish" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = check_folder(safe)
    assert report.kind == "safe" and report.safe_images == 3 and report.safe_classes == 2
    assert len(report.problems) == 1 and "goldfish/c.png" in report.problems.items[0]
    bad = tmp_path / "safe2"
    write_jsonl(bad / "metadata.jsonl", [{"image_filename": "/etc/passwd", "class_name": "x"},
                                         {"image_filename": "images/1.png"}])
    report = check_folder(bad)
    assert [p.split(":")[0] for p in report.problems.items] == ["metadata.jsonl line 1 (/etc/passwd)",
                                                                "metadata.jsonl line 2"]


def test_unknown_dataset_spec_and_missing_metadata(tmp_path):
    with pytest.raises(UserError, match="not a folder, and not 'sample' or 'hf'"):
        load_benchmark(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no metadata.jsonl here"):
        load_benchmark(str(tmp_path))


def test_check_names_a_non_utf8_line_and_a_cut_off_last_line(tmp_path):
    """Both read by the one JSONL reader (``unsafe_concepts.io``): each bad line named, the good rows after
    a bad one still checked."""
    root = make_dataset(tmp_path / "ds", {"Arson": 2})
    meta = root / "metadata.jsonl"
    good = meta.read_bytes().splitlines(keepends=True)
    meta.write_bytes(b'{"image_filename": "images/\xff.png"}\n' + b"".join(good) + b'{"image_filename": "ima')
    report = check_folder(root)
    assert [p.split(": ", 1)[0] for p in report.problems.items] == ["metadata.jsonl line 1", "metadata.jsonl line 4"]
    assert "not UTF-8" in report.problems.items[0] and "cut off" in report.problems.items[1]
    assert report.per_category["Illegal activity"] == 2
