"""The configuration examples in the docs are real configurations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.config import load_config
from strategies.registry import strategy_params

DOCS = Path(__file__).resolve().parents[1] / "docs"
TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.S)
EXAMPLES = [
    pytest.param(block, id=f"{doc.relative_to(DOCS)}#{i}")
    for doc in sorted(DOCS.glob("**/*.md"))
    for i, block in enumerate(TOML_BLOCK.findall(doc.read_text()))
]


def test_the_strategy_pages_have_examples() -> None:
    """A change to the glob or the fence must not quietly leave the strategy pages out."""
    assert any(p.id.startswith("strategies/") for p in EXAMPLES)


@pytest.mark.parametrize("block", EXAMPLES)
def test_every_toml_example_in_the_docs_loads(block: str, tmp_path: Path) -> None:
    """An example loads as a config file, and every strategy's params convert to that
    strategy's params type, as they do when the fleet builds it."""
    path = tmp_path / "example.toml"
    path.write_text(block)
    config = load_config(path)
    for strategy in config.strategies:
        strategy_params(strategy.name, strategy.params)
