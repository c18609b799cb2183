"""The examples in docs/ are real: the full workflow and the config examples validate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine import config as config_mod
from engine import validate

DOCS = Path(__file__).resolve().parents[2] / "docs"


def yaml_blocks(name: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (DOCS / name).read_text(), re.S)


def test_workflow_format_example_validates(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(yaml_blocks("workflow-format.md")[0])
    wf = validate.load_workflow(str(path))
    assert [s.id for s in wf.steps] == ["running", "skip_stopped", "slot", "stop"]


def test_every_step_example_validates(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "myrecovery.conf.j2").write_text("primary_slot_name = {{ slot | pgquote }}\n")
    head = (
        "name: snippets\n"
        "params: [new_primary_host, new_primary_port, node_host, node_pgdata, {name: node_id, type: int},"
        " {name: new_main_id, type: int}]\n"
        "vars: {bin_dir: /usr/bin, postgresql_conf: /etc/pg.conf, slot: s}\n"
        "steps:\n"
    )
    snippets = [b for b in yaml_blocks("workflow-format.md") if b.lstrip().startswith("- id:")]
    assert len(snippets) >= 7
    for i, snippet in enumerate(snippets):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(head + snippet)
        validate.load_workflow(str(path))


@pytest.mark.parametrize("index", [0, -1])
def test_configuration_examples_load(tmp_path: Path, index: int) -> None:
    blocks = yaml_blocks("configuration.md")
    text = blocks[-1] if index == -1 else "".join(b for b in blocks[:-1])
    path = tmp_path / "c.yaml"
    path.write_text(text)
    cfg = config_mod.load(str(path))
    assert cfg.path == str(path)
