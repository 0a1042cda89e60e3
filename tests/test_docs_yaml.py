"""Every ```yaml block of README.md and docs/*.md goes through the validator a reader would use.

Hazard: the README's example once did not parse (``${VAR}`` unquoted in a flow mapping) and
nothing noticed. A block is a whole proxy configuration, checked with ``llm-throttle
check-config``, unless an HTML comment right before it marks it otherwise:
``<!-- yaml: fragment -->`` (merged onto a minimal configuration, then checked),
``<!-- yaml: scenario -->`` (a loadtest scenario, checked by the scenario loader),
``<!-- yaml: other (...) -->`` (another program's file: it must parse, nothing more).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from loadtest.scenario_file import load_scenario
from proxy.cli import main
from proxy.yamlfile import load_yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*yaml:\s*(?P<kind>[a-z-]+)[^>]*-->\s*\n)?```yaml\n(?P<body>.*?)```",
                    re.DOTALL)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
KINDS = ("config", "fragment", "scenario", "other")
_BASE = {"upstreams": {"mock": {"url": "http://127.0.0.1:9"}},
         "models": {"*": {"upstreams": ["mock"]}}}


@dataclass(frozen=True)
class Block:
    where: str
    kind: str
    text: str


def _blocks() -> list[Block]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("body"))
            out.append(Block(f"{doc.relative_to(ROOT)}:{line}", match.group("kind") or "config",
                             match.group("body")))
    return out


BLOCKS = _blocks()


def test_blocks_are_found_and_marked_with_known_kinds():
    assert any(b.where.startswith("README.md") for b in BLOCKS)
    assert {b.kind for b in BLOCKS} <= set(KINDS), {b.kind for b in BLOCKS}


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_documented_yaml_block_is_valid(block: Block, tmp_path, monkeypatch, capsys):
    for name in _VAR.findall(block.text):
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    path = tmp_path / "block.yaml"
    if block.kind == "other":
        load_yaml(block.text)  # parses, no duplicate keys
        return
    if block.kind == "scenario":
        path.write_text(block.text)
        load_scenario(path)
        return
    text = block.text
    if block.kind == "fragment":
        merged = dict(_BASE)
        merged.update(load_yaml(text) or {})
        text = yaml.safe_dump(merged)
    path.write_text(text)
    code = main(["check-config", str(path)])
    assert code == 0, f"{block.where}: {capsys.readouterr().err}"
