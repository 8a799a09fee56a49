"""python -m pppssh."""

from .cli import _entry

_entry()
