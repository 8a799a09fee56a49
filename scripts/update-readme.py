"""Rewrite the site-file key tables in README.md from pppssh.config.SCHEMA."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pppssh.config import schema_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
new = re.sub(
    r"(<!-- keys:begin[^\n]*-->\n).*?(<!-- keys:end -->)",
    lambda m: m.group(1) + schema_markdown() + m.group(2),
    text,
    flags=re.S,
)
readme.write_text(new)
print("README.md", "updated" if new != text else "already up to date")
