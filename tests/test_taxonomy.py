"""The package's taxonomy is the benchmark's: same 9 categories, 75 concepts, spellings and order."""
import json

import pytest

from unsafe_concepts import paths, taxonomy
from unsafe_concepts.cli import main

REF = paths.reference_dir()


@pytest.mark.skipif(REF is None, reason="shared/reference not present")
def test_taxonomy_equals_the_reference_metadata():
    from_metadata: dict[str, list[str]] = {}
    for line in (REF / "metadata.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            concepts = from_metadata.setdefault(row["category"], [])
            if row["unsafe_concept"] not in concepts:
                concepts.append(row["unsafe_concept"])
    assert taxonomy.as_json_dict() == from_metadata
    assert list(taxonomy.TAXONOMY) == list(from_metadata)  # category order too
    assert {k: list(v) for k, v in taxonomy.TAXONOMY.items()} == from_metadata  # concept order too
    protocol = json.loads((REF / "protocol.json").read_text())
    assert list(taxonomy.CATEGORIES) == protocol["categories"]


def test_taxonomy_json_prints_exactly_category_to_concepts(capsys):
    assert main(["taxonomy", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {cat: list(concepts) for cat, concepts in taxonomy.TAXONOMY.items()}
    assert list(printed) == list(taxonomy.CATEGORIES)
    assert sum(len(v) for v in printed.values()) == 75


def test_category_of():
    assert taxonomy.category_of("The Flat Earth Theory") == "Deception"
    with pytest.raises(ValueError, match="unknown concept 'Dragons'"):
        taxonomy.category_of("Dragons")
