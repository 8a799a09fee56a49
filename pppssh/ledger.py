"""The ledger: every change a running site applied, each with its undo, as data.

An entry says where the change was made (this gateway or the remote one), what kind it is,
the argv that applied it and the argv that takes it back (or none, for a setting that goes
away with the interface). The lifecycle appends an entry as a remote change succeeds, and
just before a local one is made (taking it out again if that fails: a SIGKILL meanwhile
leaves it to be undone, "already gone" if it never took). The state file holds the whole
list, so the teardown, crash recovery after SIGKILL, `status` and a comparison of two
configurations all read the same data; no rendered string is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import CommandFailed, RemoteFailed
from .plan import Command, RouteChange, shell_join

__all__ = [
    "GONE_ANSWERS",
    "Entry",
    "Ledger",
    "already_gone",
    "diff",
    "filter_entry",
    "route_entry",
]

Side = Literal["local", "remote"]
Kind = Literal["route", "server-route", "filter", "dns", "mss"]

# What the kernel (through ip(8)) answers when the thing to delete is not there any more:
# the one place that reads a failed undo's text. ESRCH: a route that left with its interface;
# ENOENT: a rule already deleted; ENODEV: the interface itself is gone.
GONE_ANSWERS: dict[str, str] = {
    "ESRCH": "No such process",
    "ENOENT": "No such file or directory",
    "ENODEV": "Cannot find device",
    "NODEV": "No such device",  # resolvectl: the pppN has gone (dns.py)
    "NORECORD": "No resolv.conf for interface",  # resolvconf -d: the record has gone (dns.py)
    "XT_NORULE": "does a matching rule exist in that chain?",  # xtables: a rule deleted
}
ROUTE_GONE = ("ESRCH", "ENODEV")
RULE_GONE = ("ENOENT", "ENODEV")


@dataclass(frozen=True)
class Entry:
    """One applied change: where, what kind, what it is (for people), apply and undo argv."""

    side: Side
    kind: Kind
    what: str
    apply: tuple[str, ...]
    undo: tuple[str, ...] | None
    gone: tuple[str, ...] = ()  # kernel answers to the undo that mean "already gone"

    @property
    def shown(self) -> str:
        """The apply command as a user would type it."""
        return shell_join(self.apply)

    @property
    def gone_note(self) -> str | None:
        """What stop says when the undo finds the change already gone; None for a link filter
        rule, whose disappearance is worth the whole error."""
        if self.kind == "dns":
            return f"{self.what.partition(':')[0]} already gone"
        if self.kind == "mss":
            return f"already gone: {self.what}"
        if self.kind in ("route", "server-route"):
            return f"route {self.what.split()[0]} already gone with its interface"
        return None

    @property
    def undo_command(self) -> Command | None:
        """The undo as a Command, or None when the change goes away by itself."""
        return Command(self.undo) if self.undo is not None else None

    def to_json(self) -> dict[str, Any]:
        """Plain data for the state file."""
        return {
            "side": self.side,
            "kind": self.kind,
            "what": self.what,
            "apply": list(self.apply),
            "undo": list(self.undo) if self.undo is not None else None,
            "gone": list(self.gone),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        """Read one entry back; ValueError when it is not one."""
        try:
            side, kind, what = data["side"], data["kind"], data["what"]
            apply = tuple(str(word) for word in data["apply"])
            undo = data.get("undo")
            gone = tuple(str(name) for name in data.get("gone", ()))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a ledger entry: {exc}") from None
        if side not in ("local", "remote") or kind not in get_args(Kind):
            raise ValueError(f"not a ledger entry: side {side!r}, kind {kind!r}")
        if not isinstance(what, str) or not apply:
            raise ValueError("not a ledger entry: no description or no command")
        undo_argv = tuple(str(word) for word in undo) if undo is not None else None
        return cls(side, kind, what, apply, undo_argv, gone)


def _route_text(route: RouteChange) -> str:
    """`10.2.0.0/24 via 192.168.77.2 dev ppp0`: the words after `route add` in its argv."""
    argv = route.add.argv
    for i in range(len(argv) - 1):
        if argv[i : i + 2] == ("route", "add"):
            return shell_join(argv[i + 2 :])
    return str(route.network)


def route_entry(side: Side, route: RouteChange, kind: Kind = "route") -> Entry:
    """The entry for a route plan.py made (local, remote, full tunnel or the server's)."""
    gone = ROUTE_GONE if side == "local" else ()
    return Entry(side, kind, _route_text(route), route.add.argv, route.delete.argv, gone)


def filter_entry(why: str, apply: Command, undo: Command | None) -> Entry:
    """The entry for one step of the local link filter (linkfilter.FilterStep)."""
    return Entry("local", "filter", why, apply.argv, undo.argv if undo else None, RULE_GONE)


def already_gone(entry: Entry, failure: CommandFailed | RemoteFailed) -> bool:
    """Whether a failed undo means the change was already gone (one of entry.gone answers)."""
    text = failure.stderr
    return any(GONE_ANSWERS[name] in text for name in entry.gone if name in GONE_ANSWERS)


@dataclass
class Ledger:
    """The applied changes in order; every change is reported to on_change (the state file)."""

    entries: list[Entry] = field(default_factory=list)
    on_change: Callable[[list[Entry]], None] | None = None

    def add(self, entry: Entry) -> None:
        """Record a change that has just been applied."""
        self.entries.append(entry)
        self._changed()

    def insert(self, index: int, entry: Entry) -> None:
        """Record a change at its place in the undo order (a reload's new filter rule)."""
        self.entries.insert(index, entry)
        self._changed()

    def remove(self, entry: Entry) -> None:
        """Forget a change (before its undo runs: a crash then leaves no double undo)."""
        self.entries.remove(entry)
        self._changed()

    def last(self) -> Entry | None:
        """The newest entry, the next to undo."""
        return self.entries[-1] if self.entries else None

    def __len__(self) -> int:
        """How many changes are recorded."""
        return len(self.entries)

    def _changed(self) -> None:
        """Tell the listener."""
        if self.on_change is not None:
            self.on_change(list(self.entries))

    def to_json(self) -> list[dict[str, Any]]:
        """Plain data for the state file."""
        return [entry.to_json() for entry in self.entries]

    @classmethod
    def from_json(cls, data: Iterable[dict[str, Any]]) -> Ledger:
        """Read a ledger back; ValueError for anything that is not one."""
        return cls([Entry.from_json(item) for item in data])


def diff(old: Sequence[Entry], new: Sequence[Entry]) -> tuple[list[Entry], list[Entry]]:
    """What to undo (newest first) and what to apply (in order) to go from old to new.

    Entries are the same change when side, kind and apply argv agree; the order of the
    entries both have is kept, so nothing that stays is touched.
    """

    def key(entry: Entry) -> tuple[str, str, tuple[str, ...]]:
        """Identity of a change."""
        return (entry.side, entry.kind, entry.apply)

    new_keys = {key(e) for e in new}
    old_keys = {key(e) for e in old}
    remove = [e for e in reversed(old) if key(e) not in new_keys]
    add = [e for e in new if key(e) not in old_keys]
    return remove, add
