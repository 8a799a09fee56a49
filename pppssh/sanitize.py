"""Text from elsewhere (the remote gateway, its pppd, a site file) made safe to show or pass on.

What the remote side sends (helper answers, stderr, interface names) reaches a terminal, a log
and hook environments: control characters are escaped, length is bounded, and names that are
used as words (an interface) must match their exact form or are refused.
"""

from __future__ import annotations

import re

__all__ = ["IFNAME", "MAX_TEXT", "printable", "valid_ifname"]

MAX_TEXT = 300
IFNAME = re.compile(r"^ppp[0-9]{1,5}$")


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """Escape what a terminal would act on or hide (newlines, escapes, bidi), cut to limit."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def valid_ifname(name: str) -> bool:
    """Tell whether name is a ppp interface name (pppN) and nothing else."""
    return bool(IFNAME.match(name))
