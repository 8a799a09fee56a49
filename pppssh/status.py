"""`pppssh status`: what each running site is doing, from its state file and the kernel.

The state files are root's (/run/pppssh, 0750; files 0640): each is read through the trust
check every file root reads passes (trust.read_trusted: walked by descriptor, no symbolic
link, a regular file that only root, or the user running pppssh, owns and may write), and
one whose recorded site is not its file's name is left out, so that no two rows, or two
metric series, can claim one site.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .config import _SITE_NAME
from .errors import Fail, Untrusted
from .ledger import Entry, Ledger
from .system import State, pid_alive, read_state, run_dir

__all__ = [
    "FORMATS",
    "interface_stats",
    "read_site",
    "read_sites",
    "render_table",
    "site_status",
    "status_main",
    "write_atomically",
]

FORMATS = ("table", "json", "prometheus")
# A kernel interface name (IFNAMSIZ: 15 characters, no '/' or white space): the state file's
# interface is put into a /sys path only if it is one.
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")

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


def interface_stats(ifname: str) -> dict[str, int] | None:
    """rx/tx bytes and packets of an interface from sysfs (the kernel's counters), or None
    if it is gone or the name is not an interface name."""
    if not _IFNAME.match(ifname) or ifname in (".", ".."):
        return None
    base = Path("/sys/class/net") / ifname / "statistics"
    stats = {}
    try:
        for name in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
            stats[name] = int((base / name).read_text())
    except (OSError, ValueError):
        return None
    return stats


def _number(value: object) -> float | None:
    """A number from the state file, or None for anything else (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def site_status(state: State, now: float | None = None) -> dict[str, Any]:
    """One site's status as plain data (the --json form); routes from its ledger."""
    now = time.time() if now is None else now
    entries = _entries(state)
    alive = pid_alive(state.pid)
    counters = None
    if isinstance(state.interface, str) and alive:
        counters = interface_stats(state.interface)
    up = alive and state.state == "up"
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
        "bytes_in": counters["rx_bytes"] if counters else None,
        "bytes_out": counters["tx_bytes"] if counters else None,
        "packets_in": counters["rx_packets"] if counters else None,
        "packets_out": counters["tx_packets"] if counters else None,
        "local_routes": [e.shown for e in _routes(entries, "local")],
        "remote_routes": [e.shown for e in _routes(entries, "remote")],
        "routes_here": [e.what for e in _routes(entries, "local")],
        "routes_there": [e.what for e in _routes(entries, "remote")],
        "reconnects": state.reconnects,
        "last_error": state.last_error,
        "log": state.log,
        "started": _number(state.started),
        "state_since": _number(state.state_since) or _number(state.started),
        "ssh_rtt": _number(state.ssh_rtt) if up else None,
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


def read_site(site: str) -> State | None:
    """The state file of one site, read through the trust check; None when there is none
    (or it is not a state file). PermissionError for a user who may not read the run
    directory; Untrusted for a file root must not believe (a link, not root's, writable by
    others, or one that names another site)."""
    state = read_state(site)
    if state is not None and not _SITE_NAME.match(site):
        path = run_dir() / f"{site}.json"
        raise Untrusted(f"state file {path} records site {json.dumps(state.site)}: not its own")
    return state


def read_sites(names: list[str]) -> tuple[list[State], list[str], list[str]]:
    """The state of the named sites (all with a state file, when none is named), those
    named that have none, and the one-line refusals of state files that failed the check."""
    states: list[State] = []
    missing: list[str] = []
    refused: list[str] = []
    if not names:
        try:
            listed = os.listdir(run_dir())
        except FileNotFoundError:
            listed = []
        files = sorted(n.removesuffix(".json") for n in listed if n.endswith(".json"))
    for name in names or files:
        try:
            state = read_site(name)
        except Untrusted as exc:
            refused.append(str(exc))
            continue
        if state is not None:
            states.append(state)
        elif names:
            missing.append(name)
    return states, missing, refused


def write_atomically(path: str, text: str) -> None:
    """Write text to path as node-exporter's textfile collector wants it: into a temporary
    file in the same directory (a name it does not read: `.NAME.*.tmp`), mode 0644, then
    renamed over path, so that a reader sees the old file or the new one, whole. The
    directory is opened once and every step is relative to it; the temporary file is created
    anew (O_EXCL: never a link or a file someone put there), and removed on any failure."""
    target = Path(path)
    dirfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for _ in range(100):
            tmp = f".{target.name}.{os.urandom(6).hex()}.tmp"
            try:
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644, dir_fd=dirfd,
                )  # fmt: skip
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"{target.parent}: no free temporary name")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                os.fchmod(out.fileno(), 0o644)  # whatever the umask: node-exporter reads it
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target.name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dirfd)
            raise
    finally:
        os.close(dirfd)


def status_main(
    names: list[str], as_json: bool = False, fmt: str = "table", output: str | None = None
) -> int:
    """Print status for the named sites (or all); 0 if all are up, 3 if one is not running.

    fmt is table, json (as_json: the same) or prometheus; prometheus exits 0 whenever it
    wrote its text (whether each site is up is in pppssh_up), and output, when given, is a
    file it replaces atomically instead of printing."""
    fmt = "json" if as_json else fmt
    states, missing, refused = read_sites(names)
    for line in refused:
        print(f"pppssh: status: left out: {line}", file=sys.stderr)
    rows = [site_status(s) for s in states]
    if fmt == "prometheus":
        from .metrics import render

        text = render(rows, refused=len(refused))
        if output is None:
            sys.stdout.write(text)
            return 0
        try:
            write_atomically(output, text)
        except OSError as exc:
            raise Fail(f"status: cannot write {output}: {exc.strerror or exc}") from None
        return 0
    if fmt == "json":
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
    if missing or refused or not rows or any(r["state"] != "up" for r in rows):
        return EXIT_NOT_RUNNING
    return 0
