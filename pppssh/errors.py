"""Every error pppssh reports: one tree, each class with its exit status and one-line message.

    PppsshError                     exit 1 unless the class says otherwise
    ├── UsageError                  exit 2: bad arguments (RestartPreventExitStatus=2)
    │   └── ConfigError             exit 2: `file:line: key: what is wrong`
    ├── Untrusted                   a file root would trust fails the owner/mode check
    │   ├── Missing
    │   └── TooLarge
    ├── CommandFailed               a local program exited non-zero (its stderr kept)
    ├── TunnelError                 the link cannot come up or went down
    │   ├── Unreachable, HostKeyRefused, AlgorithmRefused, KeyRefused
    │   └── RemoteFailed            a remote request exited non-zero
    └── Fail                        any other one-line refusal of the command line

`main()` catches PppsshError alone: its str() is the line users see, `exit_status` the
process's exit status; anything else is a bug and gets its traceback.
"""

from __future__ import annotations

from .sanitize import printable

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "AlgorithmRefused",
    "CommandFailed",
    "ConfigError",
    "Fail",
    "HostKeyRefused",
    "KeyRefused",
    "Missing",
    "PppsshError",
    "RemoteFailed",
    "TooLarge",
    "TunnelError",
    "Unreachable",
    "Untrusted",
    "UsageError",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad config or arguments (RestartPreventExitStatus=2 in the unit)
MAX_MESSAGE = 400  # room for the list of allowed pppd options in a ConfigError
MAX_LINE = 4000  # any message: room for a host key refusal with the command that fixes it


class PppsshError(Exception):
    """A failure told to the user in one line, with the exit status it ends pppssh with."""

    exit_status = EXIT_FAILURE

    def __str__(self) -> str:
        """The one line users see: control characters (newlines too) escaped, bounded."""
        return printable(super().__str__(), MAX_LINE)


class UsageError(PppsshError):
    """Bad arguments or a bad site file: systemd must not restart into the same error."""

    exit_status = EXIT_USAGE


class Fail(PppsshError):
    """A one-line refusal of the command line, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        """Message and exit status."""
        super().__init__(message)
        self.exit_status = status

    @property
    def status(self) -> int:
        """The exit status (the name the command line has always used)."""
        return self.exit_status


class ConfigError(UsageError):
    """A problem in a site file, reported as `file:line: key: what is wrong`."""

    def __init__(self, path: str, line: int, key: str, message: str) -> None:
        """Remember where the problem is and what it is."""
        self.path = path
        self.line = line
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        """Render the one-line form users see: printable, of bounded length."""
        path = printable(self.path, 10_000)
        where = f"{path}:{self.line}" if self.line else path
        message = printable(self.message, MAX_MESSAGE)
        key = printable(self.key, 10_000)
        return f"{where}: {key}: {message}" if key else f"{where}: {message}"


class Untrusted(PppsshError):
    """A file root would trust fails the ownership or permission check (one-line message)."""


class Missing(Untrusted):
    """A file root would trust does not exist."""


class TooLarge(Untrusted):
    """A trusted file is larger than its reader's limit."""


class CommandFailed(PppsshError):
    """A local program exited non-zero; the message carries the last line of its stderr."""

    def __init__(self, shown: str, status: int | None, stderr: str) -> None:
        """Remember what ran and how it failed (`status` is the program's exit status)."""
        self.shown = shown
        self.status = status
        self.stderr = stderr.strip()
        detail = self.stderr.splitlines()[-1] if self.stderr else f"exit status {status}"
        super().__init__(f"`{shown}` failed: {detail}")


class TunnelError(PppsshError):
    """The link cannot come up, or went down: explained in one line."""


class Unreachable(TunnelError):
    """The remote gateway's SSH port did not answer."""


class HostKeyRefused(TunnelError):
    """The remote gateway's host key is unknown, changed or revoked."""


class AlgorithmRefused(TunnelError):
    """The remote gateway offers or uses only algorithms OpenSSH 9 (and pppssh) refuse."""


class KeyRefused(TunnelError):
    """The remote account refused our key."""


class RemoteFailed(TunnelError):
    """A remote command exited non-zero (its stderr made printable, on one line)."""

    def __init__(self, shown: str, status: int | None, stderr: str) -> None:
        """Remember what ran remotely and how it failed."""
        self.shown = shown
        self.status = status
        self.stderr = printable(
            " | ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())
        )
        detail = self.stderr or f"exit status {status}"
        super().__init__(f"remote `{shown}` failed: {detail}")
