"""README.md documents every site-file key with its default, and opens with the two commands."""

import re
from pathlib import Path

from pppssh.config import SCHEMA, schema_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
CI = Path(__file__).resolve().parents[1] / ".ci" / "run"


def test_key_tables_match_schema() -> None:
    """The generated block equals what SCHEMA says (run scripts/update-readme.py if not)."""
    block = re.search(r"<!-- keys:begin[^\n]*-->\n(.*?)<!-- keys:end -->", README.read_text(), re.S)
    assert block is not None
    assert block.group(1) == schema_markdown()
    for key in SCHEMA:
        assert f"| `{key.name}` |" in block.group(1)


def test_opens_with_demo_and_test_commands() -> None:
    """The first code block holds the demo and the test command, and CI runs the latter."""
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first is not None
    lines = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert lines[:2] == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci_last = [
        ln for ln in CI.read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))
    ][-1]
    assert ci_last == "bash scripts/test.sh"
