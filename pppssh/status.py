"""`pppssh status`: what each running site is doing, from its state file and the kernel."""

from __future__ import annotations

import json
import time
from typing import Any

from .ledger import Entry, Ledger
from .system import State, interface_counters, pid_alive, read_state, read_states

__all__ = ["render_table", "site_status", "status_main"]

EXIT_DEAD = 1  # LSB: the program is dead and its state file remains
EXIT_NOT_RUNNING = 3  # LSB: not running (here also: not up yet, or reconnecting)


def _duration(seconds: float) -> str:
    """1d02h03m, 2h03m04s, 3m04s or 5s."""
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _entries(state: State) -> list[Entry]:
    """The ledger of a state file (nothing, if it is not one)."""
    try:
        return Ledger.from_json(state.ledger).entries
    except ValueError:
        return []


def _routes(entries: list[Entry], side: str) -> list[Entry]:
    """The routes of one side, in the order they were added."""
    return [e for e in entries if e.side == side and e.kind in ("route", "server-route")]


def site_status(state: State, now: float | None = None) -> dict[str, Any]:
    """One site's status as plain data (the --json form); routes from its ledger."""
    now = time.time() if now is None else now
    entries = _entries(state)
    alive = pid_alive(state.pid)
    counters = interface_counters(state.interface) if state.interface and alive else None
    return {
        "site": state.site,
        "config": state.config,
        "state": state.state if alive else "dead",
        "pid": state.pid,
        "interface": state.interface,
        "remote_interface": state.remote_interface,
        "local_address": state.local_address,
        "remote_address": state.remote_address,
        "uptime": round(now - state.up_since, 1) if state.up_since and alive else None,
        "bytes_in": counters[0] if counters else None,
        "bytes_out": counters[1] if counters else None,
        "local_routes": [e.shown for e in _routes(entries, "local")],
        "remote_routes": [e.shown for e in _routes(entries, "remote")],
        "routes_here": [e.what for e in _routes(entries, "local")],
        "routes_there": [e.what for e in _routes(entries, "remote")],
        "reconnects": state.reconnects,
        "last_error": state.last_error,
        "log": state.log,
        "server": state.server,
        "servers": state.servers,
    }


def _human_bytes(n: int | None) -> str:
    """1.2 MiB style."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render_table(rows: list[dict[str, Any]]) -> str:
    """One line per site, then the routes each site applied on each side."""
    header = ("SITE", "STATE", "PID", "LINK", "UPTIME", "RECEIVED", "SENT", "RECONNECTS",
              "LAST ERROR")  # fmt: skip
    table = [header]
    for row in rows:
        link = "-"
        if row["interface"]:
            link = f"{row['interface']} {row['local_address']} -> {row['remote_address']}"
            if row["remote_interface"]:
                link += f" ({row['remote_interface']} there)"
        uptime = _duration(row["uptime"]) if row["uptime"] is not None else "-"
        table.append((
            row["site"], row["state"], str(row["pid"]), link, uptime,
            _human_bytes(row["bytes_in"]), _human_bytes(row["bytes_out"]),
            str(row["reconnects"]), row["last_error"] or "-",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in table
    ]
    for row in rows:
        for where in ("here", "there"):
            routes = row[f"routes_{where}"]
            lines.append(f"{row['site']} routes {where}: {', '.join(routes) or 'none'}")
        if row.get("server"):
            servers = row.get("servers") or [row["server"]]
            rank = servers.index(row["server"]) + 1 if row["server"] in servers else 0
            more = f" ({rank} of {len(servers)}: {', '.join(servers)})" if len(servers) > 1 else ""
            lines.append(f"{row['site']} gateway: {row['server']}{more}")
    return "\n".join(lines)


def status_main(names: list[str], as_json: bool) -> int:
    """Print status for the named sites (or all); 0 if all are up, 3 if one is not running."""
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    if names:
        for name in names:
            state = read_state(name)
            if state is None:
                missing.append(name)
            else:
                rows.append(site_status(state))
    else:
        rows = [site_status(s) for s in read_states()]
    if as_json:
        out: dict[str, Any] = {"sites": rows}
        if missing:
            out["not_running"] = missing
        print(json.dumps(out, indent=2))
    else:
        if rows:
            print(render_table(rows))
        for name in missing:
            print(f"{name}: not running")
        if not rows and not missing:
            print("no site is running")
    if any(r["state"] == "dead" for r in rows):
        return EXIT_DEAD
    if missing or not rows or any(r["state"] != "up" for r in rows):
        return EXIT_NOT_RUNNING
    return 0
