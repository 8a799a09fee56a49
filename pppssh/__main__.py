"""python -m pppssh."""

from .cli import entry

entry()
