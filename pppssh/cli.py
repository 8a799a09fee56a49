"""Command line: pppssh start | stop | reload | reconnect | status | routes | check |
remote-setup."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from . import __version__
from .config import _SITE_NAME, ConfigError, SiteConfig, check_files, load, server_text
from .errors import EXIT_USAGE, Fail, PppsshError
from .events import STAMP
from .system import (
    SiteLock,
    leftover_pppd,
    pid_alive,
    read_state,
    read_states,
    remove_state,
    run_dir,
)

__all__ = ["entry", "main"]


CONF_DIR = Path("/etc/pppssh")  # where a bare NAME's site file is: CONF_DIR/NAME.conf


def _is_path(arg: str) -> bool:
    """A site file given as a path: it holds a '/' or ends in .conf (else it is a NAME)."""
    return os.sep in arg or arg.endswith(".conf")


def _bare_name(arg: str) -> str:
    """A bare site NAME, checked; anything else is a one-line usage error."""
    if not _SITE_NAME.match(arg):
        raise Fail(
            f"'{arg}' is neither a site name (letters, digits, '_', '.', '-'; at most 32) nor a "
            "site file (a path with a '/' or ending in .conf)",
            EXIT_USAGE,
        )
    return arg


def site_file(arg: str) -> str:
    """The site file an argument means: a path as given, a bare NAME as CONF_DIR/NAME.conf."""
    return arg if _is_path(arg) else str(CONF_DIR / f"{_bare_name(arg)}.conf")


def _load_arg(arg: str, files: bool = True) -> SiteConfig:
    """Load the site file an argument means (ConfigError as load() raises it); a bare NAME's
    file must be site NAME, so that `stop NAME` and `status NAME` find what `start NAME` ran."""
    cfg = load(site_file(arg), files=files)
    if not _is_path(arg) and cfg.name != arg:
        line = cfg.lines.get("name", 0)
        raise ConfigError(
            str(cfg.path), line, "name",
            f"site '{cfg.name}' given as '{arg}': `pppssh stop {arg}` would not find it; "
            f"name the file {cfg.name}.conf or give its path",
        )  # fmt: skip
    return cfg


def _load(arg: str, files: bool = True) -> SiteConfig:
    """Load a site file or NAME (with files=False, not the files it names); errors exit 2."""
    try:
        return _load_arg(arg, files=files)
    except ConfigError as exc:
        raise Fail(str(exc), EXIT_USAGE) from None


def _need_root(what: str) -> None:
    """Local pppd and route changes need root."""
    if os.geteuid() != 0:
        raise Fail(f"{what} needs root (it runs pppd and changes routes)")


# ---------------------------------------------------------------------------- start


def cmd_start(args: argparse.Namespace) -> int:
    """Start a site: in the background (returns once up) or in the foreground."""
    cfg = _load(args.config)
    _need_root("start")
    if args.foreground:
        return _run_foreground(cfg, None)
    if SiteLock(cfg.name).held_elsewhere():
        raise Fail(_already_running(cfg.name))
    return _start_background(cfg, args.verbose)


def _already_running(site: str) -> str:
    """The refusal for a second start."""
    state = read_state(site)
    pid = f" (pid {state.pid})" if state else ""
    return f"site '{site}' is already running{pid}; stop it first: pppssh stop {site}"


def _start_background(cfg: SiteConfig, verbose: bool = False) -> int:
    """Fork the daemon; relay its progress until it says READY or exits.

    A fork, not a second interpreter: the daemon starts with the modules this process has
    already imported (a fresh `python3 -m pppssh` is most of a second on a slow gateway).
    The tunnel code (asyncssh, cryptography) is imported here, before the fork: the daemon
    then maps only the pages of those libraries it uses, not all that loading them touched.
    """
    from . import adapters, supervisor  # noqa: F401

    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon: never returns into this caller, whatever happens
        os.close(r)
        status = 1
        try:
            status = _daemon(cfg, w, verbose)
        except BaseException:  # a bug: its traceback, before the exit skips the usual print
            traceback.print_exc()
        finally:
            _exit(status)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as ready:
            said = ready.read()
    except KeyboardInterrupt:  # Ctrl-C while starting: the daemon undoes what it did
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        return 130
    if said.startswith(b"READY"):
        return 0
    if said.startswith(b"RETRYING "):
        why = said.decode(errors="replace")[len("RETRYING ") :].strip()
        print(
            f"pppssh: {cfg.name} is not up yet ({why}); it keeps trying in the background "
            f"(retry_start = yes): pppssh status {cfg.name}; pppssh stop {cfg.name}",
            flush=True,
        )
        return 0
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if status == 0:
        raise Fail(f"site '{cfg.name}' was stopped before it came up")
    return status if status > 0 else 128 - status


def _daemon(cfg: SiteConfig, ready_fd: int, verbose: bool) -> int:
    """The forked daemon: a session of its own, no terminal input, then the foreground run;
    its exit status, failures reported as main() reports them."""
    os.setsid()
    with open(os.devnull, "rb") as devnull:
        os.dup2(devnull.fileno(), 0)
    return _reported(lambda: _run_foreground(cfg, ready_fd), verbose)


def undo_leftovers(site: str) -> bool:
    """Undo what a pppssh that died without its teardown left here; True if it left some."""
    from .adapters import recover_site

    return recover_site(site)


def _run_foreground(cfg: SiteConfig, ready_fd: int | None) -> int:
    """Hold the site in this process under its lock (adapters.hold_site) until a signal
    stops it or it gives up."""
    from .adapters import hold_site

    lock = SiteLock(cfg.name)
    if not lock.acquire():
        raise Fail(_already_running(cfg.name))
    try:
        return hold_site(cfg, ready_fd)
    finally:
        lock.release()


# ---------------------------------------------------------------------------- stop


def _site_name(arg: str) -> str:
    """A site given by its file (a path: its name) or by NAME (as is: the running site)."""
    if _is_path(arg):
        return _load(arg, files=False).name
    return _bare_name(arg)


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop one site, the only running one, or all of them; wait for the teardown."""
    if args.sites:
        names = [_site_name(a) for a in args.sites]
    else:
        try:
            running = [s.site for s in read_states()]
        except PermissionError:
            raise Fail(_root_only("stop")) from None
        if not running:
            print("pppssh: no site is running")
            return 0
        if len(running) > 1 and not args.all:
            raise Fail(
                f"several sites are running ({', '.join(running)}): name one, or use --all",
                EXIT_USAGE,
            )
        names = running
    # SIGTERM to every daemon first: they take their links down side by side (a hub with
    # dozens of sites stops in the time of the slowest, not the sum); then wait for each.
    try:
        stopping = [_begin_stop(name) for name in names]
    except PermissionError:
        raise Fail(_root_only("stop")) from None
    deadline = time.monotonic() + args.timeout
    status = 0
    for one in stopping:
        if one is not None:
            status = max(status, _finish_stop(one, deadline, args.timeout))
    return status


@dataclass
class _Stopping:
    """A daemon that was sent SIGTERM, and where its log stood then."""

    site: str
    pid: int
    log: Path | None
    offset: int


def _begin_stop(site: str) -> _Stopping | None:
    """SIGTERM one daemon; None when it was not running (what it left is undone here)."""
    state = read_state(site)
    if state is None or not pid_alive(state.pid):
        if SiteLock(site).held_elsewhere():
            raise Fail(f"site '{site}' is starting or stopping; try again in a moment")
        if state is not None or leftover_pppd(None, f"pppssh-{site}"):
            _need_root("stop")
            undo_leftovers(site)
            print(f"pppssh: site '{site}' was not running (undid what it left)")
        else:
            print(f"pppssh: site '{site}' is not running")
        return None
    _need_root("stop")
    log = Path(state.log) if state.log else None
    offset = log.stat().st_size if log and log.exists() else 0
    os.kill(state.pid, signal.SIGTERM)
    return _Stopping(site, state.pid, log, offset)


def _finish_stop(one: _Stopping, deadline: float, timeout: float) -> int:
    """Relay a stopping daemon's teardown until it has undone everything and exited."""
    offset = one.offset
    while pid_alive(one.pid):
        offset = _relay(one.log, offset)
        if time.monotonic() > deadline:
            raise Fail(f"site '{one.site}' (pid {one.pid}) did not stop within {timeout:g}s")
        time.sleep(0.05)
    _relay(one.log, offset)
    if read_state(one.site) is not None:
        remove_state(one.site)
        raise Fail(f"site '{one.site}' (pid {one.pid}) exited without finishing its teardown")
    if one.log is not None:  # a clean stop: nothing to read there (a failure's log stays)
        with contextlib.suppress(FileNotFoundError):
            one.log.unlink()
    return 0


def _relay(log: Path | None, offset: int) -> int:
    """Print what the daemon logged since offset (its teardown steps)."""
    if log is None:
        return offset
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    end = data.rfind(b"\n") + 1
    if end:  # the log's stamps are for the file; the terminal shows the lines alone
        sys.stdout.write(STAMP.sub("", data[:end].decode(errors="replace")))
        sys.stdout.flush()
    return offset + end


# ---------------------------------------------------------------------------- reload, reconnect


def _running_pid(site: str, verb: str) -> int:
    """The pid of a running site's daemon (root only); Fail when it does not run."""
    _need_root(verb)
    try:
        state = read_state(site)
    except PermissionError:
        raise Fail(_root_only(verb)) from None
    if state is None or not pid_alive(state.pid):
        raise Fail(f"site '{site}' is not running")
    return state.pid


def _outcome(site: str) -> dict[str, object] | None:
    """The daemon's last reload outcome, or None."""
    from .adapters import reload_outcome_path

    try:
        data = json.loads(reload_outcome_path(site).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cmd_reload(args: argparse.Namespace) -> int:
    """Send SIGHUP to a site's daemon and relay the outcome: 0 applied, 1 refused."""
    site = _site_name(args.site)
    pid = _running_pid(site, "reload")
    before = _outcome(site)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while True:
        now = _outcome(site)
        if now is not None and now != before and now.get("pid") == pid:
            break
        if not pid_alive(pid):
            raise Fail(f"site '{site}' (pid {pid}) ended during the reload")
        if time.monotonic() > deadline:
            raise Fail(f"site '{site}' (pid {pid}) did not answer the reload within "
                       f"{args.timeout:g}s")  # fmt: skip
        time.sleep(0.05)
    line = str(now.get("line", ""))
    if now.get("applied") is True:
        print(line)
        return 0
    raise Fail(line.removeprefix("pppssh: "))


def cmd_reconnect(args: argparse.Namespace) -> int:
    """Send SIGUSR1 to a site's daemon: it drops the link and dials again at once."""
    site = _site_name(args.site)
    pid = _running_pid(site, "reconnect")
    os.kill(pid, signal.SIGUSR1)
    print(f"pppssh: {site}: reconnecting now (pid {pid})")
    return 0


# ---------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    """Show running sites."""
    from .status import status_main

    names = [_site_name(a) for a in args.sites]
    if args.json and args.format not in (None, "json"):
        raise Fail(f"status: --json and --format {args.format} say different things", EXIT_USAGE)
    fmt = "json" if args.json else args.format or "table"
    if args.output is not None and fmt != "prometheus":
        raise Fail("status: --output is for --format prometheus", EXIT_USAGE)
    try:
        return status_main(names, fmt=fmt, output=args.output)
    except PermissionError:
        raise Fail(_root_only("status")) from None


def _root_only(verb: str) -> str:
    """The refusal for a user who may not read the run directory."""
    return (
        f"{verb}: cannot read {run_dir()}: the state files are root's alone (a 0750 "
        f"directory, 0640 files); run pppssh {verb} as root"
    )


# ---------------------------------------------------------------------------- routes


def cmd_routes(args: argparse.Namespace) -> int:
    """Print workstation routes (or the gateways' own) from the site file alone."""
    from .workstations import gateway_commands, render, render_json

    if not args.print:
        raise Fail("routes: nothing to do; use --print", EXIT_USAGE)
    cfg = _load(args.config, files=False)
    if args.gateways:
        state = read_state(cfg.name)
        running = state is not None and pid_alive(state.pid) and state.state == "up"
        local_if = state.interface if running and state else None
        remote_if = state.remote_interface if running and state else None
        shown = [server_text(server) for server in cfg.servers]
        if running and state and state.server in shown:  # the gateway of host now in use
            cfg = cfg.at_server(shown.index(state.server))
        sys.stdout.write(gateway_commands(cfg, local_if, remote_if))
    elif args.json:
        sys.stdout.write(render_json(cfg))
    else:
        sys.stdout.write(render(cfg, args.format))
    return 0


# ---------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    """Preflight: one line per check with its fix; exit 1 if any failed (2: bad site file)."""
    from .check import Check, render, run_checks

    try:
        cfg = _load_arg(args.config, files=False)
        check_files(cfg, missing_ok=True)  # a missing one is a check below, with its fix
    except ConfigError as exc:
        sys.stdout.write(render([Check("site file valid", False, str(exc))]))
        return EXIT_USAGE
    checks = [Check("site file valid", True, f"{cfg.path} (site {cfg.name})")]
    checks += asyncio.run(run_checks(cfg))
    sys.stdout.write(render(checks))
    return 0 if all(c.ok for c in checks) else 1


# ---------------------------------------------------------------------------- remote-setup


def cmd_remote_setup(args: argparse.Namespace) -> int:
    """Print (or apply over an administrator's login, to every gateway of `host` in order)
    the remote gateway's set-up."""
    from .remote_setup import apply_all, authorised_key, removal_script, setup_script
    from .ssh import TunnelError

    cfg = _load(args.config, files=False)
    try:
        check_files(cfg)  # the identity and known_hosts it reads, as `start` would
    except ConfigError as exc:
        raise Fail(str(exc), EXIT_USAGE) from None
    given = Path(args.public_key).absolute() if args.public_key else None
    try:
        key = asyncio.run(authorised_key(cfg, given))
    except TunnelError as exc:
        raise Fail(str(exc)) from None

    def script(at: SiteConfig) -> str:
        """The script for one gateway."""
        return removal_script(at, key) if args.remove else setup_script(at, key)

    if not args.apply:
        sys.stdout.write(script(cfg))
        return 0
    results = asyncio.run(apply_all(cfg, script, args.admin, args.admin_identity))
    verb = "removal" if args.remove else "set-up"
    for gateway, status, why in results:
        if status == 0:
            sys.stdout.write(f"pppssh remote-setup: {gateway}: {verb} done\n")
        else:
            sys.stderr.write(f"pppssh remote-setup: {gateway}: {verb} failed: {why}\n")
    failed = [status for _gateway, status, _why in results if status]
    return failed[0] if failed else 0


# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every verb."""
    parser = argparse.ArgumentParser(
        prog="pppssh", description="PPP over SSH: join two sites through the SSH door."
    )
    parser.add_argument("--version", action="version", version=f"pppssh {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    start = verbs.add_parser("start", help="bring a site's link up")
    start.add_argument("config", help="site file, or NAME for /etc/pppssh/NAME.conf")
    start.add_argument(
        "--foreground", action="store_true", help="stay attached (for systemd Type=notify)"
    )
    start.set_defaults(func=cmd_start)

    stop = verbs.add_parser("stop", help="take a site's link down and wait until it is gone")
    stop.add_argument("sites", nargs="*", metavar="SITE", help="site name or site file")
    stop.add_argument("--all", action="store_true", help="stop every running site")
    stop.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    stop.set_defaults(func=cmd_stop)

    reload = verbs.add_parser(
        "reload", help="apply a changed site file (networks, hooks) without dropping the link"
    )
    reload.add_argument("site", metavar="SITE", help="site name or site file")
    reload.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    reload.set_defaults(func=cmd_reload)

    reconnect = verbs.add_parser(
        "reconnect", help="drop the link and dial again now, skipping a backoff wait"
    )
    reconnect.add_argument("site", metavar="SITE", help="site name or site file")
    reconnect.set_defaults(func=cmd_reconnect)

    status = verbs.add_parser("status", help="show running sites")
    status.add_argument("sites", nargs="*", metavar="SITE", help="site name or site file")
    status.add_argument("--json", action="store_true", help="the same as --format json")
    status.add_argument(
        "--format", choices=("table", "json", "prometheus"), default=None,
        help="table (default), json, or prometheus (text exposition format 0.0.4)",
    )  # fmt: skip
    status.add_argument(
        "--output", metavar="FILE", default=None,
        help="with --format prometheus: replace FILE atomically (node-exporter's textfile "
        "collector) instead of printing",
    )  # fmt: skip
    status.set_defaults(func=cmd_status)

    routes = verbs.add_parser("routes", help="print the routes workstations on each LAN need")
    routes.add_argument("config", help="site file, or NAME for /etc/pppssh/NAME.conf")
    routes.add_argument("--print", action="store_true", help="print them (works offline)")
    routes.add_argument(
        "--format", choices=("ip", "route", "windows", "bsd"), default="ip",
        help="ip (iproute2, default), route (net-tools), windows, bsd (macOS/BSD)",
    )  # fmt: skip
    routes.add_argument("--json", action="store_true", help="machine-readable output")
    routes.add_argument(
        "--gateways", action="store_true", help="print the gateway-side commands `start` runs"
    )
    routes.set_defaults(func=cmd_routes)

    check = verbs.add_parser(
        "check", help="preflight: what would stop the link, one line each, changing nothing"
    )
    check.add_argument("config", help="site file, or NAME for /etc/pppssh/NAME.conf")
    check.set_defaults(func=cmd_check)

    setup = verbs.add_parser(
        "remote-setup",
        help="print (or --apply) the remote gateway's set-up: account, helper, sudoers, key",
    )
    setup.add_argument("config", help="site file, or NAME for /etc/pppssh/NAME.conf")
    setup.add_argument(
        "--apply", action="store_true",
        help="run it on each gateway of host, in order, over an administrator's SSH login",
    )  # fmt: skip
    setup.add_argument("--remove", action="store_true", help="undo the set-up instead")
    setup.add_argument(
        "--admin", default="root", metavar="USER",
        help="administrator to log in as for --apply (root, or a user with sudo; default root)",
    )  # fmt: skip
    setup.add_argument(
        "--admin-identity",
        metavar="FILE",
        help="the administrator's private key (default: ~/.ssh keys and the agent)",
    )
    setup.add_argument(
        "--public-key", metavar="FILE",
        help="the public key the link account is to accept (default: the identity's, else "
        "the first key of the agent or token); root's, like the site's other files",
    )  # fmt: skip
    setup.set_defaults(func=cmd_remote_setup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a verb, turn failures into one-line errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return _reported(lambda: args.func(args), args.verbose)


def _reported(run: Callable[[], int], verbose: bool) -> int:
    """run()'s exit status; a PppsshError becomes its one line on stderr (with -v, its
    traceback too) and its exit status; Ctrl-C is 130. Anything else is a bug: it is not
    caught here, and Python prints its traceback."""
    try:
        return run()
    except PppsshError as exc:
        if verbose:
            traceback.print_exc()
        print(f"pppssh: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


def _exit(status: int) -> NoReturn:
    """End the process without tearing the interpreter down: nothing is left to flush but
    stdout and stderr."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


def entry() -> None:
    """For `python -m pppssh` and the pppssh script: `pppssh start` returns to its caller
    without interpreter teardown, a third of a second sooner on a slow gateway (the lab
    kernel)."""
    _exit(main())
