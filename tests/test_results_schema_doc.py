"""docs/results-schema.md is generated from the record types and must match them."""
import dataclasses
from pathlib import Path

from sabench.records import schema_doc

PAGE = Path(__file__).resolve().parent.parent / "docs" / "results-schema.md"


def test_committed_page_is_the_generated_one():
    assert PAGE.read_text() == schema_doc.render(), \
        "regenerate: python -m sabench.records.schema_doc > docs/results-schema.md"


def test_every_field_of_every_type_has_a_row():
    page = schema_doc.render()
    for cls in schema_doc.TYPES:
        for f in dataclasses.fields(cls):
            if f.name != "extra" and not f.metadata.get("skip"):  # skip: not in the file (RunRecord.source)
                assert f"| `{f.name}` |" in page.split(f"## {cls.__name__}")[1].split("\n## ")[0], (cls, f.name)
