"""What happens to a site, as typed events; and the reporters that tell it to someone.

The lifecycle and the supervisor only emit events. The terminal reporter prints today's
progress lines (`[#] ip route add ...`, `[user@host] route add ...`, `link up: ...`), the log
reporter writes them through Python logging, the notify reporter gives systemd its
STATUS=/READY=/STOPPING= lines, and the state reporter is the one writer of the state file.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TextIO

from .ledger import Entry
from .system import State

__all__ = [
    "STAMP",
    "CommandRun",
    "Connected",
    "Connecting",
    "ErrorRecorded",
    "Event",
    "Failback",
    "Failed",
    "HookOutput",
    "IpcpUp",
    "KeepaliveRtt",
    "LedgerChanged",
    "LinkDown",
    "LinkUp",
    "LocalPppdStarted",
    "LocalPppdStopped",
    "LogReporter",
    "NextServer",
    "Note",
    "NotifyReporter",
    "Ready",
    "Reconnecting",
    "ReloadRefused",
    "Reloaded",
    "RemotePppdEnded",
    "RemotePppdStarted",
    "Reporter",
    "Reporters",
    "RouteAdded",
    "ServerChosen",
    "SignalReceived",
    "StampedFormatter",
    "Starting",
    "StateReporter",
    "Stopped",
    "Stopping",
    "TerminalReporter",
    "Up",
    "log_stamp",
]

# The daemon log's stamp: ISO 8601, local time with its offset (journald's short-iso).
LOG_STAMP = "%Y-%m-%dT%H:%M:%S%z"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ", re.MULTILINE)


class Event:
    """Base of every event; line() is what a person reads, None when there is nothing."""

    def line(self) -> str | None:
        """The progress line of this event."""
        return None


@dataclass(frozen=True)
class Starting(Event):
    """The site is held from now on (the state file is written first here)."""

    site: str


@dataclass(frozen=True)
class Connecting(Event):
    """An attempt begins: the SSH connection is being opened."""

    destination: str
    known_hosts: str

    def line(self) -> str:
        """connecting to ... (host key checked against ...)."""
        return f"connecting to {self.destination} (host key checked against {self.known_hosts})"


@dataclass(frozen=True)
class Connected(Event):
    """The SSH connection is open (the server's version made printable)."""

    server: str

    def line(self) -> str:
        """connected; server ..."""
        return f"connected; server {self.server}"


@dataclass(frozen=True)
class CommandRun(Event):
    """A command is run: on this gateway (`[#]`) or on the remote one (`[user@host]`)."""

    side: Literal["local", "remote"]
    shown: str
    prefix: str = "[#]"

    def line(self) -> str:
        """[#] ip route add ... or [user@host] route add ..."""
        return f"{self.prefix} {self.shown}"


@dataclass(frozen=True)
class HookOutput(Event):
    """One line the up or down command printed."""

    text: str

    def line(self) -> str:
        """Indented by two."""
        return f"  {self.text}"


@dataclass(frozen=True)
class RemotePppdStarted(Event):
    """The first PPP frame came from the remote pppd."""

    def line(self) -> str:
        """remote pppd started."""
        return "remote pppd started (first PPP frame received)"


@dataclass(frozen=True)
class LocalPppdStarted(Event):
    """The local pppd runs (its argv is shown as a command)."""

    pid: int | None
    shown: str

    def line(self) -> str:
        """[#] pppd ..."""
        return f"[#] {self.shown}"


@dataclass(frozen=True)
class IpcpUp(Event):
    """IPCP agreed on the addresses; the local interface is known."""

    interface: str
    local: str
    remote: str


@dataclass(frozen=True)
class LinkUp(Event):
    """Both ends of the link are known."""

    interface: str
    local: str
    remote: str
    remote_interface: str

    def line(self) -> str:
        """link up: ppp0 A -> B (remote ppp3)."""
        return (
            f"link up: {self.interface} {self.local} -> {self.remote} "
            f"(remote {self.remote_interface})"
        )


@dataclass(frozen=True)
class RouteAdded(Event):
    """A route (or filter rule) is in place and in the ledger."""

    entry: Entry


@dataclass(frozen=True)
class LedgerChanged(Event):
    """The ledger now holds these entries."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Up(Event):
    """Routes and the up command done: the site is up."""

    since: float


@dataclass(frozen=True)
class KeepaliveRtt(Event):
    """An SSH keepalive's round trip on the link that is up, in seconds (for metrics)."""

    seconds: float


@dataclass(frozen=True)
class Stopping(Event):
    """The teardown begins."""


@dataclass(frozen=True)
class LinkDown(Event):
    """Some part of the link died; cause says which and how. reconnecting: the site dials
    again after the undo (reconnect = yes), so the state and STATUS say so at once."""

    cause: str
    reconnecting: bool = False

    def line(self) -> str:
        """link down: ...; undoing."""
        return f"link down: {self.cause}; undoing"


@dataclass(frozen=True)
class LocalPppdStopped(Event):
    """The local pppd is gone (how it ended)."""

    how: str

    def line(self) -> str:
        """local pppd stopped (...)."""
        return f"local pppd stopped ({self.how})"


@dataclass(frozen=True)
class RemotePppdEnded(Event):
    """The remote pppd's channel is closed (how it ended)."""

    how: str

    def line(self) -> str:
        """remote pppd ended (...)."""
        return f"remote pppd ended ({self.how})"


@dataclass(frozen=True)
class Note(Event):
    """A plain progress line."""

    text: str

    def line(self) -> str:
        """The text as it is."""
        return self.text


@dataclass(frozen=True)
class ErrorRecorded(Event):
    """An error `status` should show (unless one is there already and keep_first is set)."""

    text: str
    keep_first: bool = False


@dataclass(frozen=True)
class Ready(Event):
    """Routes are in place: the site is up (again)."""

    site: str
    link: str
    pid: int
    again: bool

    def line(self) -> str:
        """pppssh: NAME is up: ... or is up again."""
        if self.again:
            return f"pppssh: {self.site} is up again: {self.link}"
        return (
            f"pppssh: {self.site} is up: {self.link} (pid {self.pid}); "
            f"stop it with: pppssh stop {self.site}"
        )


@dataclass(frozen=True)
class Reconnecting(Event):
    """An attempt failed; the next one starts after delay seconds."""

    site: str
    delay: float
    cause: str

    def line(self) -> str:
        """pppssh: NAME: cause; trying again in N s."""
        return f"pppssh: {self.site}: {self.cause}; trying again in {self.delay:.1f}s"


@dataclass(frozen=True)
class ServerChosen(Event):
    """The next attempt dials servers[index] (host:port each, in the order of `host`)."""

    site: str
    index: int
    servers: tuple[str, ...]

    @property
    def server(self) -> str:
        """The gateway dialled, host:port."""
        return self.servers[self.index]

    def line(self) -> str | None:
        """gateway 2 of 2: host:port (nothing with one gateway)."""
        if len(self.servers) == 1:
            return None
        return f"gateway {self.index + 1} of {len(self.servers)}: {self.server}"


@dataclass(frozen=True)
class NextServer(Event):
    """An attempt failed (or a link was lost) and the next gateway is dialled at once."""

    site: str
    cause: str
    server: str

    def line(self) -> str:
        """pppssh: NAME: cause; trying the next gateway, host:port, now."""
        return f"pppssh: {self.site}: {self.cause}; trying the next gateway, {self.server}, now"


@dataclass(frozen=True)
class Failback(Event):
    """On a later gateway, the first was probed (SSH login, host key checked): ok or why not."""

    site: str
    server: str
    ok: bool
    detail: str
    current: str
    retry: float

    def line(self) -> str:
        """pppssh: NAME: failback: host:port accepts the login, moving back; or not ready."""
        if self.ok:
            return (f"pppssh: {self.site}: failback: {self.server} accepts the login "
                    f"({self.detail}); moving the link back to it from {self.current}")  # fmt: skip
        return (f"pppssh: {self.site}: failback: {self.server} not ready ({self.detail}); "
                f"staying on {self.current}, next try in {self.retry:g}s")  # fmt: skip


@dataclass(frozen=True)
class SignalReceived(Event):
    """SIGTERM or SIGINT: the site stops."""

    name: str

    def line(self) -> str:
        """received SIGTERM."""
        return f"received {self.name}"


@dataclass(frozen=True)
class Stopped(Event):
    """The site stopped on request, everything undone."""

    site: str

    def line(self) -> str:
        """pppssh: NAME stopped."""
        return f"pppssh: {self.site} stopped"


@dataclass(frozen=True)
class Reloaded(Event):
    """A reload applied the site file's changes to the running site (serial: its number)."""

    site: str
    serial: int
    changes: tuple[str, ...]

    def line(self) -> str:
        """pppssh: NAME: reloaded: what changed."""
        what = "; ".join(self.changes) if self.changes else "nothing to change"
        return f"pppssh: {self.site}: reload {self.serial}: done: {what}"


@dataclass(frozen=True)
class ReloadRefused(Event):
    """A reload changed nothing: the file is bad or untrusted, a key needs a new link, or a
    change was refused and rolled back."""

    site: str
    serial: int
    why: str

    def line(self) -> str:
        """pppssh: NAME: reload refused: why."""
        return f"pppssh: {self.site}: reload {self.serial}: refused: {self.why}"


@dataclass(frozen=True)
class Failed(Event):
    """The site gave up (an error line, for stderr)."""

    site: str
    error: str

    def line(self) -> str:
        """pppssh: NAME: error."""
        return f"pppssh: {self.site}: {self.error}"


class Reporter:
    """Receives every event (subclasses pick what they need)."""

    def report(self, event: Event) -> None:
        """Take one event."""


class Reporters(Reporter):
    """Several reporters as one; the list may change while running (terminal -> log)."""

    def __init__(self, *reporters: Reporter) -> None:
        """Start with these reporters."""
        self.reporters = list(reporters)

    def report(self, event: Event) -> None:
        """Pass the event to each reporter in turn."""
        for reporter in list(self.reporters):
            reporter.report(event)


class TerminalReporter(Reporter):
    """Today's progress lines on stdout (errors on stderr), each flushed at once."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        """Write to out/err (default: sys.stdout/sys.stderr as they are at the time)."""
        self.out = out
        self.err = err

    def report(self, event: Event) -> None:
        """Print the event's line, if it has one."""
        text = event.line()
        if text is None:
            return
        stream = (self.err or sys.stderr) if isinstance(event, Failed) else (self.out or sys.stdout)
        print(text, file=stream, flush=True)


class LogReporter(Reporter):
    """The same lines through Python logging (the daemon's log file once `start` returned)."""

    def __init__(self, logger: logging.Logger) -> None:
        """Log through logger."""
        self.logger = logger

    def report(self, event: Event) -> None:
        """Log the event's line: warnings for failures, info for the rest."""
        text = event.line()
        if text is None:
            return
        bad = isinstance(event, Failed | LinkDown | ReloadRefused)
        level = logging.WARNING if bad else logging.INFO
        self.logger.log(level, text)


def log_stamp(when: float | None = None) -> str:
    """A log line's prefix for when (default now): LOG_STAMP in local time."""
    return time.strftime(LOG_STAMP, time.localtime(when))


class StampedFormatter(logging.Formatter):
    """The daemon log's format: every line of a record begins with the record's time."""

    def format(self, record: logging.LogRecord) -> str:
        """The message, each of its lines stamped with log_stamp(record.created)."""
        stamp = log_stamp(record.created)
        return "\n".join(f"{stamp} {line}" for line in super().format(record).split("\n"))


class NotifyReporter(Reporter):
    """systemd's view (Type=notify): STATUS= at every change, READY=1 once up or once the
    first attempt failed under retry_start (so `systemctl start` does not block), STATUS=
    that says `retrying`/`reconnecting` and why until the link is up, `failed: ...` at the
    end of a site that gave up, STOPPING=1."""

    def __init__(self, send: Callable[..., object]) -> None:
        """send(*lines) delivers lines to the notify socket (system.sd_notify)."""
        self.send = send
        self.was_up = False  # a link came up once: later failures are reconnecting
        self.last: str | None = None  # the cause of the last failed attempt, while not up

    def _waiting(self) -> str:
        """What the site is doing while not up: retrying (never up yet) or reconnecting."""
        return "reconnecting" if self.was_up else "retrying"

    def report(self, event: Event) -> None:
        """Send what systemd needs to know of this event."""
        if isinstance(event, Connecting):
            if self.last is None:
                self.send(f"STATUS=connecting to {event.destination}")
            else:
                self.send(f"STATUS={self._waiting()}: connecting to {event.destination} "
                          f"(last: {self.last})")  # fmt: skip
        elif isinstance(event, Ready):
            self.was_up, self.last = True, None
            self.send("READY=1", f"STATUS=up: {event.link}")
        elif isinstance(event, Reconnecting):
            self.last = event.cause
            status = f"STATUS={self._waiting()} in {event.delay:.1f}s: {event.cause}"
            # READY=1 while retrying: the unit is active and keeps trying, as `pppssh start`
            # returns with RETRYING; systemd ignores a second READY=1.
            if self.was_up:
                self.send(status)
            else:
                self.send("READY=1", status)
        elif isinstance(event, NextServer):
            self.last = event.cause  # the Connecting that follows says it
        elif isinstance(event, Failback) and event.ok:
            self.send(f"STATUS=failback: moving the link back to {event.server}")
        elif isinstance(event, LinkDown):  # said at once, not after the undo
            after = "reconnecting" if event.reconnecting else "stopping"
            self.send(f"STATUS={after}: link down: {event.cause}")
        elif isinstance(event, Failed):
            self.send(f"STATUS=failed: {event.error}")
        elif isinstance(event, SignalReceived):
            self.send("STOPPING=1")


class StateReporter(Reporter):
    """The one writer of the state file: applies each event to the State and saves it."""

    def __init__(self, state: State, write: Callable[[State], None],
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        """Keep state up to date and write it with write()."""
        self.state = state
        self.write = write
        self.clock = clock

    def report(self, event: Event) -> None:
        """Apply the event; write the file when something changed."""
        s = self.state
        was = s.state
        if isinstance(event, KeepaliveRtt):
            s.ssh_rtt = round(event.seconds, 6)
        elif isinstance(event, LocalPppdStarted):
            s.local_pppd_pid = event.pid
        elif isinstance(event, IpcpUp):
            s.interface, s.local_address, s.remote_address = (
                event.interface, event.local, event.remote
            )  # fmt: skip
        elif isinstance(event, LinkUp):
            s.remote_interface = event.remote_interface
        elif isinstance(event, LedgerChanged):
            s.set_ledger([entry.to_json() for entry in event.entries])
        elif isinstance(event, ErrorRecorded):
            if event.keep_first and s.last_error:
                return
            s.last_error = event.text
        elif isinstance(event, Up):
            s.state, s.up_since = "up", event.since
        elif isinstance(event, Stopping):
            s.state, s.ssh_rtt = "stopping", None
        elif isinstance(event, LinkDown):  # known now; the undo may take long (a dead link)
            s.state = "reconnecting" if event.reconnecting else "stopping"
            s.last_error, s.up_since, s.ssh_rtt = f"link down: {event.cause}", None, None
        elif isinstance(event, LocalPppdStopped):
            s.local_pppd_pid, s.interface = None, None
        elif isinstance(event, RemotePppdEnded):
            s.remote_interface = None
        elif isinstance(event, Reconnecting):
            s.reconnects += 1
            s.state, s.last_error, s.up_since = "reconnecting", event.cause, None
            s.ssh_rtt = None
        elif isinstance(event, NextServer):
            s.reconnects += 1
            s.last_error, s.up_since, s.ssh_rtt = event.cause, None, None
            if s.state != "starting":
                s.state = "reconnecting"
        elif isinstance(event, ServerChosen):
            s.server, s.servers = event.server, list(event.servers)
        elif not isinstance(event, Starting | Connecting):
            return
        if s.state != was:
            s.state_since = self.clock()
        self.write(s)
