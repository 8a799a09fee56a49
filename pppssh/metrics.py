"""`pppssh status --format prometheus`: the sites' status as Prometheus metrics (pure).

The text exposition format 0.0.4, as node-exporter's textfile collector reads it: each family
once, its `# HELP` and `# TYPE` lines first, then its samples. Names follow Prometheus'
conventions: the `pppssh_` prefix, base units (`_bytes_total`, `_seconds`), `_total` for
counters, `_timestamp_seconds` for a Unix time. Nothing from a state file reaches the output
unescaped: label values have `\\`, `"` and newlines escaped, sample values are numbers this
module formats itself, and a site name or interface that is not one pppssh would write is
still escaped, never dropped into a line as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["FAMILIES", "Family", "escape_help", "escape_label", "render"]

STATES = ("starting", "up", "reconnecting", "stopping", "dead")


@dataclass(frozen=True)
class Family:
    """One metric family: its name, type, help text, and how to read its value from a row
    (pppssh.status.site_status); labels: which of the row's fields label it, besides site."""

    name: str
    type: str
    help: str
    value: Callable[[dict[str, Any]], float | int | None]
    labels: tuple[str, ...] = ()


def _up(row: dict[str, Any]) -> int:
    """1 when the site's link is up (its daemon alive), else 0."""
    return 1 if row["state"] == "up" else 0


def _when(row: dict[str, Any]) -> float | None:
    """When the site's state last changed (Unix time)."""
    value = row.get("state_since")
    return value if isinstance(value, int | float) else None


FAMILIES = (
    Family("pppssh_up", "gauge", "1 when the site's link is up (routes in place), else 0.", _up),
    Family(
        "pppssh_link_info", "gauge",
        "The interfaces and addresses of a link that is up (always 1).",
        lambda row: 1 if row["interface"] else None,
        ("interface", "remote_interface", "local_address", "remote_address"),
    ),
    Family(
        "pppssh_receive_bytes_total", "counter",
        "Bytes received on the site's ppp interface (the kernel's counter; it starts again at "
        "0 with each new link).",
        lambda row: row.get("bytes_in"), ("interface",),
    ),
    Family(
        "pppssh_transmit_bytes_total", "counter",
        "Bytes sent on the site's ppp interface (the kernel's counter; it starts again at 0 "
        "with each new link).",
        lambda row: row.get("bytes_out"), ("interface",),
    ),
    Family(
        "pppssh_receive_packets_total", "counter",
        "Packets received on the site's ppp interface (the kernel's counter).",
        lambda row: row.get("packets_in"), ("interface",),
    ),
    Family(
        "pppssh_transmit_packets_total", "counter",
        "Packets sent on the site's ppp interface (the kernel's counter).",
        lambda row: row.get("packets_out"), ("interface",),
    ),
    Family(
        "pppssh_reconnects_total", "counter",
        "Times the site went to reconnecting (a lost link, a failed attempt, a reconnect "
        "request) since its daemon started.",
        lambda row: row.get("reconnects"),
    ),
    Family(
        "pppssh_last_change_timestamp_seconds", "gauge",
        "When the site's state (starting, up, reconnecting, stopping) last changed, in Unix "
        "time.", _when,
    ),
    Family(
        "pppssh_start_timestamp_seconds", "gauge",
        "When the site's daemon started, in Unix time.", lambda row: row.get("started"),
    ),
    Family(
        "pppssh_ssh_keepalive_rtt_seconds", "gauge",
        "Round trip of the last SSH keepalive request on the link that is up (sent every "
        "keepalive_interval seconds).",
        lambda row: row.get("ssh_rtt"),
    ),
)  # fmt: skip


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote, newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A HELP text as the text format wants it: backslash and newline escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float | int) -> str | None:
    """A sample value: an integer as it is, a float in Python's shortest form; None for a
    bool, NaN or infinity (never from pppssh; such a sample is left out)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return None
    return repr(float(value))


def _labels(row: dict[str, Any], names: Iterable[str]) -> str:
    """{site="...",name="..."} with every value escaped (a missing one is "")."""
    pairs = [("site", row["site"]), *((name, row.get(name)) for name in names)]
    inner = ",".join(f'{name}="{escape_label(str(value or ""))}"' for name, value in pairs)
    return "{" + inner + "}"


def render(rows: list[dict[str, Any]], refused: int = 0) -> str:
    """The exposition text for these sites (status rows), every family once, with a state
    set (`pppssh_state`, 1 for the site's state, 0 for the others) after `pppssh_up`, and
    the count of state files left out because they failed the trust check (refused)."""
    lines: list[str] = [
        "# HELP pppssh_state_files_refused State files in the run directory left out: not "
        "root's alone (nor are the directories above), or naming another site.",
        "# TYPE pppssh_state_files_refused gauge",
        f"pppssh_state_files_refused {int(refused)}",
    ]
    for family in FAMILIES:
        samples: list[str] = []
        for row in rows:
            value = family.value(row)
            if value is None or not isinstance(value, int | float):
                continue
            text = _number(value)
            if text is not None:
                samples.append(f"{family.name}{_labels(row, family.labels)} {text}")
        lines += [f"# HELP {family.name} {escape_help(family.help)}",
                  f"# TYPE {family.name} {family.type}", *samples]  # fmt: skip
        if family.name == "pppssh_up":
            lines += [
                "# HELP pppssh_state The site's state: 1 for the one it is in, 0 for the others.",
                "# TYPE pppssh_state gauge",
            ]
            for row in rows:
                for state in STATES:
                    labels = _labels({**row, "state": state}, ("state",))
                    lines.append(f"pppssh_state{labels} {1 if row['state'] == state else 0}")
    return "\n".join(lines) + "\n"
