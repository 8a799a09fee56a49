"""Trust on this gateway: what root reads or runs must be root's alone, checked by descriptor.

pppssh runs as root. A site file, the identity and known_hosts it names, the local pppd and
the hook programs decide what root does, so each must be as safe as OpenSSH (safe_path) and
sudo require of their own files: a regular file owned by root (or by the user running pppssh,
when that is not root), not writable by group or others, in directories that are all the
same. The check walks the path one component at a time with openat(O_NOFOLLOW) from `/`, and
the file's content is read from the very descriptor that was checked: a symlink, FIFO or
rename swapped in between is never followed, and nothing is looked up by path twice. A
symbolic link on the way is read from the checked directory that holds it (so only root can
have made it) and its target walked the same way; a link in anyone else's directory is
refused with that directory, never resolved first as realpath() would. A FIFO or device is
opened without blocking (O_NONBLOCK, O_NOCTTY) and refused as not a regular file.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import Missing, TooLarge, Untrusted

__all__ = [
    "TOP",
    "Missing",
    "TooLarge",
    "Trusted",
    "Untrusted",
    "check_file",
    "check_program",
    "read_trusted",
]

# Components above TOP are taken as trusted. Always "/" in pppssh; the unit tests point it at a
# private directory of their own, since /tmp (mode 1777) is rightly trusted by nobody.
TOP = "/"
MAX_READ = 1024 * 1024


@dataclass(frozen=True)
class Trusted:
    """A checked file: its resolved path, its stat result and (when read) its bytes."""

    path: Path
    st: os.stat_result
    data: bytes = b""


def _owners() -> frozenset[int]:
    """Who may own a trusted file: root, and the user running pppssh."""
    return frozenset({0, os.geteuid()})


def _check(st: os.stat_result, where: str, what: str, secret: bool = False) -> None:
    """Refuse a file or directory that someone other than root (or us) owns or may write."""
    mode = stat.S_IMODE(st.st_mode)
    elsewhere = "keep the file in a directory only root can write, such as /etc/pppssh"
    if st.st_uid not in _owners():
        fix = elsewhere if what == "directory" else f"chown root {_q(where)}"
        raise Untrusted(f"{what} {where} is owned by uid {st.st_uid}; only root may own it ({fix})")
    if mode & 0o022:
        fix = elsewhere if what == "directory" else f"chmod go-w {_q(where)}"
        raise Untrusted(f"{what} {where} is writable by group or others (mode {mode:04o}); {fix}")
    if secret and mode & 0o077:
        raise Untrusted(
            f"{what} {where} is readable by group or others (mode {mode:04o}), as OpenSSH "
            f"refuses too; chmod 600 {_q(where)}"
        )


def _q(path: str) -> str:
    """Quote a path for a shell line in a message."""
    return shlex.quote(path)


MAX_LINKS = 40  # symbolic links followed in one path, as the kernel allows


def _under_top(here: Path, top: Path) -> bool:
    """True when here is TOP or below it: the part of the path that is checked."""
    return here == top or top in here.parents


def _open_checked(path: str | Path, what: str, flags: int, secret: bool) -> tuple[int, Path]:
    """Walk to path by descriptor, checking each directory; return the file's fd (checked).

    Every component is opened with O_NOFOLLOW relative to the directory before it. A symbolic
    link is read from that directory (which was checked, so only root could have made it) and
    its target walked the same way; nothing is ever looked up by the path as a whole.
    """
    text = os.fspath(path)
    if "\0" in text or not text:
        raise Untrusted(f"{what} {text!r}: not a path")
    if not text.startswith("/"):
        text = os.path.join(os.getcwd(), text)
    top = Path(os.path.realpath(TOP))
    todo = [p for p in text.split("/") if p not in ("", ".")]
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    here = Path("/")
    links = 0
    try:
        if _under_top(here, top):
            _check(os.fstat(fd), "/", "directory")
        while todo:
            name = todo.pop(0)
            last = not todo
            if name == "..":
                nfd = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd, here = nfd, here.parent
                if _under_top(here, top):
                    _check(os.fstat(fd), str(here), "directory")
                if last:
                    raise Untrusted(f"{what} {text} is a directory, not a file")
                continue
            want = flags if last else os.O_PATH
            try:
                nfd = os.open(
                    name, want | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY,
                    dir_fd=fd,
                )  # fmt: skip
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                nfd = -1  # a symbolic link, opened with flags other than O_PATH
            if nfd < 0 or stat.S_ISLNK(os.fstat(nfd).st_mode):
                if nfd >= 0:
                    os.close(nfd)
                links += 1
                if links > MAX_LINKS:
                    raise Untrusted(f"{what} {text}: too many symbolic links")
                target = os.readlink(name, dir_fd=fd)
                todo[:0] = [p for p in target.split("/") if p not in ("", ".")]
                if target.startswith("/"):
                    os.close(fd)
                    fd, here = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), Path("/")
                if not todo:
                    raise Untrusted(f"{what} {text} is a directory, not a file")
                continue
            if last:
                os.close(fd)
                fd = -1
                return _checked_file(nfd, here / name, what, secret)
            if not stat.S_ISDIR(os.fstat(nfd).st_mode):
                os.close(nfd)
                raise Untrusted(f"{what} {text}: {here / name} is not a directory")
            os.close(fd)
            fd, here = nfd, here / name
            if _under_top(here, top):
                _check(os.fstat(fd), str(here), "directory")
        raise Untrusted(f"{what} {text} is a directory, not a file")
    except FileNotFoundError:
        raise Missing(f"{what} {text} does not exist") from None
    except OSError as exc:
        raise Untrusted(f"{what} {text}: cannot open it safely ({exc.strerror or exc})") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _checked_file(ffd: int, real: Path, what: str, secret: bool) -> tuple[int, Path]:
    """Check the opened file itself: a regular file, root's alone; close it if not."""
    try:
        st = os.fstat(ffd)
        if stat.S_ISDIR(st.st_mode):
            raise Untrusted(f"{what} {real} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted(f"{what} {real} is not a regular file")
        _check(st, str(real), what, secret)
    except BaseException:  # whatever stops the check, the descriptor is closed; re-raised
        os.close(ffd)
        raise
    return ffd, real


def read_trusted(
    path: str | Path, what: str, secret: bool = False, limit: int = MAX_READ
) -> Trusted:
    """Read a file root will trust, from the descriptor that passed the checks."""
    fd, real = _open_checked(path, what, os.O_RDONLY, secret)
    try:
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} {path} is larger than {limit // 1024} KiB")
        return Trusted(real, os.fstat(fd), b"".join(chunks))
    except OSError as exc:
        raise Untrusted(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def check_program(path: str | Path, what: str) -> Trusted:
    """Check a program root will run: its file and every directory above it are root's alone.

    The program is then run by its resolved path: with every directory on the way owned by
    root and closed to others, only root could swap it between this check and the exec.
    """
    fd, real = _open_checked(path, what, os.O_PATH, False)
    try:
        st = os.fstat(fd)
        if not st.st_mode & 0o111:
            raise Untrusted(f"{what} {path} is not executable")
        return Trusted(real, st)
    finally:
        os.close(fd)


def check_file(path: str | Path, what: str, secret: bool = False) -> Trusted:
    """Check a file root will trust without reading it here (opened O_PATH: no read access
    is needed, nothing of it is read): the file and every directory above it are root's alone,
    and with secret=True it is closed to group and others too."""
    fd, real = _open_checked(path, what, os.O_PATH, secret)
    try:
        return Trusted(real, os.fstat(fd))
    finally:
        os.close(fd)
