"""pppssh/errors.py: each class's exit status and one-line message, and that every exception
class pppssh defines belongs to the one tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pppssh
from pppssh import errors
from pppssh.errors import (
    AlgorithmRefused,
    CommandFailed,
    ConfigError,
    Fail,
    HostKeyRefused,
    KeyRefused,
    Missing,
    PppsshError,
    RemoteFailed,
    TooLarge,
    TunnelError,
    Unreachable,
    Untrusted,
    UsageError,
)

# Exception classes under pppssh/ that are not PppsshErrors because they never reach the user:
# name -> why. None today; one added here must say what catches it.
INTERNAL: dict[str, str] = {}

HOSTILE = "first line\nsecond\r\x1b[31mred\x1b[0m\ttab\u202eevil\x00end"


def _one_printable_line(text: str) -> None:
    """text is a single line a terminal shows as it is."""
    assert text.isprintable(), repr(text)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text


def _examples() -> list[PppsshError]:
    """One instance of every class of the tree, each given the hostile text."""
    return [
        PppsshError(HOSTILE),
        UsageError(HOSTILE),
        ConfigError("/etc/pppssh/x\n.conf", 3, "ho\x1bst", HOSTILE),
        Untrusted(HOSTILE),
        Missing(HOSTILE),
        TooLarge(HOSTILE),
        CommandFailed(f"ip route add {HOSTILE}", 2, f"warning\n{HOSTILE}"),
        TunnelError(HOSTILE),
        Unreachable(HOSTILE),
        HostKeyRefused(HOSTILE),
        AlgorithmRefused(HOSTILE),
        KeyRefused(HOSTILE),
        RemoteFailed(f"sudo {HOSTILE}", 1, f"{HOSTILE}\n\n{HOSTILE}"),
        Fail(HOSTILE),
        Fail(HOSTILE, errors.EXIT_USAGE),
    ]


def test_every_class_of_the_tree_has_an_example() -> None:
    classes = {getattr(errors, n) for n in errors.__all__ if inspect.isclass(getattr(errors, n))}
    assert {type(e) for e in _examples()} == classes


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (PppsshError, 1),
        (UsageError, 2),
        (ConfigError, 2),
        (Untrusted, 1),
        (Missing, 1),
        (TooLarge, 1),
        (CommandFailed, 1),
        (TunnelError, 1),
        (Unreachable, 1),
        (HostKeyRefused, 1),
        (AlgorithmRefused, 1),
        (KeyRefused, 1),
        (RemoteFailed, 1),
        (Fail, 1),
    ],
)
def test_exit_status(cls: type[PppsshError], status: int) -> None:
    assert cls.exit_status == status
    assert next(e.exit_status for e in _examples() if type(e) is cls) == status


def test_fail_carries_the_status_it_is_given() -> None:
    assert Fail("x").exit_status == Fail("x").status == errors.EXIT_FAILURE
    assert Fail("x", 2).exit_status == Fail("x", 2).status == errors.EXIT_USAGE == 2
    assert Fail("x", 75).exit_status == 75


@pytest.mark.parametrize("exc", _examples(), ids=lambda e: type(e).__name__)
def test_message_is_one_printable_line(exc: PppsshError) -> None:
    """Newlines, escapes, carriage returns, NUL and bidi controls stay visible and inert."""
    text = str(exc)
    _one_printable_line(text)
    assert "first line" in text and "end" in text  # escaped, not dropped
    assert "\\n" in text or "\\x1b" in text


def test_message_length_is_bounded() -> None:
    assert len(str(TunnelError("x" * 100_000))) <= errors.MAX_LINE
    assert str(TunnelError("x" * 100)) == "x" * 100  # short ones unchanged
    assert str(TunnelError("naïve → ok")) == "naïve → ok"  # printable text is not escaped


def test_config_error_form() -> None:
    assert str(ConfigError("site.conf", 12, "remote_networks", "overlaps")) == (
        "site.conf:12: remote_networks: overlaps"
    )
    assert str(ConfigError("site.conf", 0, "", "no such file")) == "site.conf: no such file"
    assert str(ConfigError("site.conf", 4, "", "cannot read line")) == (
        "site.conf:4: cannot read line"
    )
    assert str(ConfigError("site.conf", 0, "identity", "missing")) == (
        "site.conf: identity: missing"
    )
    err = ConfigError("a\nb.conf", 7, "k\x1b", "bad\nvalue")
    assert str(err) == "a\\nb.conf:7: k\\x1b: bad\\nvalue"
    assert (err.path, err.line, err.key, err.message) == ("a\nb.conf", 7, "k\x1b", "bad\nvalue")
    assert len(str(ConfigError("f", 1, "k", "m" * 5000))) < 500


def test_command_failed_and_remote_failed_keep_what_ran() -> None:
    local = CommandFailed("ip route add 10.1.0.0/24", 2, "note\nRTNETLINK answers: File exists\n")
    assert str(local) == "`ip route add 10.1.0.0/24` failed: RTNETLINK answers: File exists"
    assert (local.status, local.stderr.splitlines()[0]) == (2, "note")
    assert str(CommandFailed("true", 3, "")) == "`true` failed: exit status 3"
    remote = RemoteFailed("sudo -n ip", 1, "a\n\n  b  \n")
    assert str(remote) == "remote `sudo -n ip` failed: a | b"
    assert str(RemoteFailed("x", None, "")) == "remote `x` failed: exit status None"


def _pppssh_modules() -> list[str]:
    """Every module of the package, by name."""
    names = [m.name for m in pkgutil.iter_modules(pppssh.__path__, "pppssh.")]
    assert "pppssh.errors" in names and "pppssh.lifecycle" in names
    return names


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a pppssh module (at its top or inside a class)."""
    found: dict[str, type[BaseException]] = {}
    for name in _pppssh_modules():
        module = importlib.import_module(name)
        todo: list[object] = [module]
        while todo:
            holder = todo.pop()
            for value in vars(holder).values():
                if inspect.isclass(value) and value.__module__ == name:
                    if issubclass(value, BaseException):
                        found[f"{name}.{value.__qualname__}"] = value
                    if value is not holder:
                        todo.append(value)
    return found


def test_every_exception_class_of_pppssh_is_in_the_tree() -> None:
    found = _exception_classes()
    assert "pppssh.errors.TunnelError" in found  # the walk finds what it looks for
    outside = {name for name, cls in found.items() if not issubclass(cls, PppsshError)} - set(
        INTERNAL
    )
    assert outside == set(), (
        f"exception classes outside the tree (derive from PppsshError): {outside}"
    )
    assert set(INTERNAL) <= set(found), "an INTERNAL entry names a class that is gone"


def test_modules_reexport_the_tree_classes_themselves() -> None:
    """trust.Untrusted, ssh.TunnelError etc. are the errors module's classes, not copies."""
    tree = {getattr(errors, n) for n in errors.__all__ if inspect.isclass(getattr(errors, n))}
    for name in _pppssh_modules():
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            value = getattr(module, attr)
            if inspect.isclass(value) and issubclass(value, BaseException):
                assert value in tree, f"{name}.{attr}"
