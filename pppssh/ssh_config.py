"""`ssh_config = yes`: the few facts of root's ~/.ssh/config pppssh takes for a site's host.

Only HostName, Port, User, IdentityFile, ProxyJump and CertificateFile are read, from the
`Host` entries whose patterns match the site's `host` (`*`, `?`, `!` as OpenSSH: a matching
negation rules the entry out), the first value of each keyword winning as in ssh. Every other
keyword is skipped unread, so StrictHostKeyChecking, UserKnownHostsFile, ProxyCommand,
LocalCommand and the like can never weaken or widen what pppssh does. `Match` entries are
skipped (their conditions are not evaluated) and `Include` is not followed. A key set in the
site file wins over the file. The file is read through trust, like every file root uses.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from pathlib import Path

from . import config, trust
from .errors import ConfigError, Missing, TooLarge, Untrusted
from .known_hosts import match_pattern_list

__all__ = ["KEYWORDS", "apply", "lookup"]

KEYWORDS = ("hostname", "port", "user", "identityfile", "proxyjump", "certificatefile")
MAX_FILE = 256 * 1024
_LINE = re.compile(r"^\s*([A-Za-z]+)(?:\s*=\s*|\s+)(.*?)\s*$")


def lookup(text: str, host: str, path: str = "ssh_config") -> dict[str, tuple[str, int]]:
    """The first value (and its line) of each keyword pppssh reads, for host."""
    found: dict[str, tuple[str, int]] = {}
    active = True  # lines before the first Host apply to every host
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue  # ssh would refuse it; pppssh reads only what it needs
        keyword, value = m.group(1).lower(), m.group(2)
        if keyword == "host":
            patterns = ",".join(value.split())
            active = match_pattern_list(host.lower(), patterns) == 1
            continue
        if keyword == "match":
            active = False
            continue
        if not active or keyword not in KEYWORDS or keyword in found:
            continue
        try:
            words = shlex.split(value, comments=True)
        except ValueError as exc:
            raise ConfigError(path, number, keyword, f"cannot split '{value}': {exc}") from None
        if len(words) != 1:
            raise ConfigError(path, number, keyword, "takes exactly one value here")
        found[keyword] = (words[0], number)
    return found


def _value(keyword: str, value: str, host: str, path: str, number: int) -> str:
    """Expand `~` (root's home) and, in HostName, %h; any other % token is refused."""
    if keyword == "hostname":
        value = value.replace("%h", host)
    if "%" in value.replace("%%", ""):
        raise ConfigError(path, number, keyword, "% tokens are not supported by pppssh here")
    value = value.replace("%%", "%")
    if keyword in ("identityfile", "certificatefile"):
        value = os.path.expanduser(value)
        if not value.startswith("/"):
            value = os.path.join(os.path.expanduser("~/.ssh"), value)
    return value


def apply(cfg: config.SiteConfig) -> config.SiteConfig:
    """cfg with what its ssh_config file says for its host, where the site file is silent."""
    assert cfg.ssh_config is not None
    site, line = str(cfg.path), cfg.lines.get("ssh_config", 0)
    try:
        data = trust.read_trusted(cfg.ssh_config, "ssh_config", limit=MAX_FILE).data
    except (Missing, TooLarge, Untrusted) as exc:
        raise ConfigError(site, line, "ssh_config", str(exc)) from None
    path = str(cfg.ssh_config)
    text = data.decode("utf-8", errors="replace")
    found = lookup(text, cfg.host, path)
    changes: dict[str, object] = {}

    def unset(attr: str) -> bool:
        """The site file did not set this key."""
        return cfg.lines.get(attr, 0) == 0

    for keyword, (raw, number) in found.items():
        value = _value(keyword, raw, cfg.host, path, number)
        try:
            if keyword == "hostname":
                changes["host"] = config.parse_value("host", value)
            elif keyword == "port" and unset("port"):
                changes["port"] = config.parse_value("port", value)
            elif keyword == "user" and not cfg.user:
                changes["user"] = config.parse_value("user", value)
            elif keyword == "identityfile" and unset("identity"):
                changes["identity"] = Path(value)
            elif keyword == "certificatefile" and unset("certificate"):
                changes["certificate"] = Path(value)
            elif keyword == "proxyjump" and unset("jump"):
                changes["jump"] = () if value == "none" else config.parse_value("jump", value)
        except ValueError as exc:
            raise ConfigError(path, number, keyword, str(exc)) from None
    cfg = dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
    if not cfg.user:
        raise ConfigError(site, cfg.lines.get("ssh_config", 0), "user",
                          f"not set here, and {path} has no User for {cfg.host}")  # fmt: skip
    if cfg.lines.get("identity", 0) == 0 and "identity" not in changes and not cfg.agent:
        missing = f"not set here, and {path} has no IdentityFile for {cfg.host}"
        raise ConfigError(site, line, "identity", missing)
    hops = tuple(h if h.user else config.Hop(cfg.user, h.host, h.port) for h in cfg.jump)
    return dataclasses.replace(cfg, jump=hops)
