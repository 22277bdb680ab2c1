"""The configuration examples in the docs are real configurations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_toml_example_in_the_docs_loads(doc: Path, tmp_path: Path) -> None:
    for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block)
        load_config(path)
