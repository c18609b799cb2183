"""The generated parts of docs/ are current: reference.md, the diagrams, the workflows page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine import docgen

ROOT = Path(__file__).resolve().parents[2]


def test_reference_is_current() -> None:
    assert (ROOT / "docs" / "reference.md").read_text() == docgen.reference(), (
        "docs/reference.md is stale: run `python -m engine.docgen > docs/reference.md`"
    )


def test_reference_lists_every_key_of_both_schemas() -> None:
    from engine.schema import config_schema, workflow_schema

    text = docgen.reference()
    wf = workflow_schema()
    step = wf["properties"]["steps"]["items"]["properties"]
    for key in list(wf["properties"]) + list(step):
        assert f"| `{key}` |" in text or f"### `{key}`" in text, key
    for name in ("sql", "ssh", "template", "file", "local", "exit"):
        obj = docgen._object_of(step[name])
        assert obj is not None
        for key in obj["properties"]:
            assert f"| `{key}` |" in text, f"{name}.{key}"
    for key, prop in config_schema()["properties"].items():
        subkeys = (
            [f"{key}.{k}" for k in prop.get("properties", {})] if prop.get("type") == "object" else [key]
        )
        for sub in subkeys:
            assert f"| `{sub}` |" in text, sub


def test_config_defaults_come_from_the_code() -> None:
    text = docgen.reference()
    assert "| `postgres.bin_dir` | text | `/usr/lib/postgresql/15/bin` |" in text
    assert "| `lock_timeout` | number ≥ 0 | `120` |" in text


def test_workflow_format_links_the_reference() -> None:
    assert "(reference.md)" in (ROOT / "docs" / "workflow-format.md").read_text()


def test_update_page_replaces_only_marked_blocks() -> None:
    text = "x\n<!-- graph: remote_start -->\n```mermaid\nold\n```\n```mermaid\nkeep\n```\n"
    out = docgen.update_page(text)
    assert "old" not in out and "keep" in out
    assert docgen.diagram("remote_start") in out


def test_main_prints_the_reference(capsys: Any) -> None:
    assert docgen.main([]) == 0
    assert capsys.readouterr().out == docgen.reference()
    assert docgen.main(["--bogus"]) == 2


def _anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_pages_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        if not page.exists():
            continue
        for target, anchor in re.findall(r"\]\(([^)#:\s]+\.md)(?:#([^)\s]+))?\)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.name}: link to missing {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
                assert anchor in {_anchor(h) for h in headings}, f"{page.name}: no #{anchor} in {target}"
