"""`pppssh remote-setup`: what the remote gateway needs for a helper-restricted link account.

The output is one POSIX sh script, run as root on the remote gateway: it creates the link
account, installs pppssh-helper, the site's policy (allow-list) and pppd options, a sudoers
drop-in with exact commands, and the key line that can only reach the helper. The same text is
printed for review or piped over an administrator's SSH login (`--apply`). Every value in it
was validated by config.py, and the files go in through quoted here-documents.
"""

from __future__ import annotations

import asyncio
import sys
from importlib import resources

from ._asyncssh import asyncssh
from .config import SiteConfig
from .plan import PKILL, remote_pidfile, remote_pppd_options
from .ssh import TunnelError

__all__ = [
    "HELPER_PATH",
    "POLICY_DIR",
    "apply",
    "helper_text",
    "key_line",
    "peers_text",
    "policy_text",
    "public_key",
    "removal_script",
    "setup_script",
    "sudoers_text",
]

HELPER_PATH = "/usr/local/libexec/pppssh-helper"
POLICY_DIR = "/etc/pppssh/helper"
PEERS_DIR = "/etc/ppp/peers"
SUDOERS_DIR = "/etc/sudoers.d"
SUDO = "/usr/bin/sudo"
EOF_MARK = "PPPSSH_EOF"
# pppd options that take one argument (for one option per line in the peers file)
_WITH_ARGUMENT = {
    "linkname", "ipparam", "mtu", "mru", "lcp-echo-interval", "lcp-echo-failure", "deflate",
    "bsdcomp",
}  # fmt: skip


def helper_text() -> str:
    """The helper script shipped with pppssh."""
    return (resources.files("pppssh") / "data" / "pppssh-helper").read_text(encoding="utf-8")


def public_key(cfg: SiteConfig) -> str:
    """`type base64` of the site's key: from the private key when readable, else its .pub."""
    try:
        key = asyncssh.read_private_key(str(cfg.identity))
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        pub = cfg.identity.with_name(cfg.identity.name + ".pub")
        try:
            key = asyncssh.read_public_key(str(pub))
        except (OSError, asyncssh.KeyImportError, ValueError):
            raise TunnelError(
                f"identity {cfg.identity}: cannot read it ({exc}) nor {pub}; "
                f"make the key with: ssh-keygen -t ed25519 -N '' -f {cfg.identity}"
            ) from None
    kind, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
    return f"{kind} {blob}"


def sudoers_name(cfg: SiteConfig) -> str:
    """The drop-in's file name (sudo skips names with a dot)."""
    return "pppssh-" + cfg.name.replace(".", "_")


def key_line(cfg: SiteConfig, pubkey: str) -> str:
    """The authorized_keys line: no forwarding, a pty, and only the helper."""
    options = ["restrict", "pty", f'command="{HELPER_PATH} {cfg.name}"']
    if cfg.key_from:
        options.append(f'from="{",".join(cfg.key_from)}"')
    return f"{','.join(options)} {pubkey} {cfg.linkname}"


def policy_text(cfg: SiteConfig) -> str:
    """The helper's policy for this site: programs, link addresses, allowed networks."""
    lines = [
        f"# pppssh-helper policy of site {cfg.name}, written by `pppssh remote-setup`.",
        "# Routes may be added or removed only for these networks, only via the peer.",
        f"pppd {cfg.remote_pppd}",
        f"ip {cfg.remote_ip}",
        f"local {cfg.remote_address}",
        f"peer {cfg.local_address}",
        *(f"network {net}" for net in cfg.local_networks),
    ]
    return "\n".join(lines) + "\n"


def peers_text(cfg: SiteConfig) -> str:
    """Options of this gateway's pppd, fixed on the remote side (`pppd call pppssh-SITE`)."""
    lines = [
        f"# pppd options of pppssh site {cfg.name}, written by `pppssh remote-setup`.",
        "# The device is the pty sshd gives pppssh-helper; the client cannot add options.",
    ]
    words = remote_pppd_options(cfg)
    common = len(words) - len(cfg.remote_options)
    i = 0
    while i < common:
        take = 2 if words[i] in _WITH_ARGUMENT else 1
        lines.append(" ".join(words[i : i + take]))
        i += take
    if cfg.remote_options:
        lines.append(f"# remote_options of {cfg.path.name}")
        lines.append(" ".join(cfg.remote_options))
    return "\n".join(lines) + "\n"


def sudo_commands(cfg: SiteConfig) -> list[str]:
    """Exactly the commands the helper runs as root."""
    pidfile = remote_pidfile(cfg)
    commands = [f"{cfg.remote_pppd} call {cfg.linkname}"]
    commands += [f"{PKILL} -{sig} -x -F {pidfile} pppd" for sig in ("TERM", "KILL")]
    for net in cfg.local_networks:
        for verb in ("add", "del"):
            commands.append(f"{cfg.remote_ip} route {verb} {net} via {cfg.local_address}")
    return commands


def sudoers_text(cfg: SiteConfig) -> str:
    """The sudoers drop-in: the link account may run these exact commands, nothing else."""
    user = cfg.user
    lines = [
        f"# pppssh site {cfg.name}, written by `pppssh remote-setup`: {user} may run exactly",
        f"# these commands as root (they come from {HELPER_PATH}), nothing else.",
        f"Defaults:{user} !requiretty",
        "# pppd talks straight to the pty sshd gives it; no second pty from sudo.",
        f"Defaults:{user} !use_pty",
        *(f"{user} ALL=(root) NOPASSWD: {command}" for command in sudo_commands(cfg)),
    ]
    return "\n".join(lines) + "\n"


def _heredoc(path: str, text: str) -> str:
    """Shell lines that write text to path.new through a quoted here-document."""
    if EOF_MARK in text:
        raise ValueError(f"{path}: text contains the here-document mark {EOF_MARK}")
    return f"cat >'{path}.new' <<'{EOF_MARK}'\n{text}{EOF_MARK}\n"


def _install(path: str, text: str, mode: str) -> str:
    """Write a root-owned file atomically: path.new, chmod, rename."""
    return f"{_heredoc(path, text)}chmod {mode} '{path}.new'\nmv -f '{path}.new' '{path}'\n"


_PREAMBLE = """\
#!/bin/sh
{title}
set -eu
umask 022
PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() {{ printf 'pppssh remote-setup: %s\\n' "$*"; }}
fail() {{ printf 'pppssh remote-setup: %s\\n' "$*" >&2; exit 1; }}
[ "$(id -u)" = 0 ] || fail "run this as root on the remote gateway"
"""


def setup_script(cfg: SiteConfig, pubkey: str) -> str:
    """The whole set-up, as a script for root on the remote gateway (safe to run again)."""
    user, name = cfg.user, cfg.name
    sudoers = f"{SUDOERS_DIR}/{sudoers_name(cfg)}"
    staged = f"{SUDOERS_DIR}/.{sudoers_name(cfg)}"  # sudo ignores names with a dot
    blob = pubkey.split()[1]
    title = (
        f"# pppssh remote-setup of site {name}: run as root on {cfg.host}.\n"
        f"# Creates the link account {user} (no password) if missing, installs {HELPER_PATH},\n"
        f"# the site's policy and pppd options, a sudoers drop-in with exact commands, and a\n"
        f"# key line that can only reach the helper. Running it again changes nothing more."
    )
    out = [_PREAMBLE.format(title=title)]
    out.append(
        "\n# 0. check first, change nothing on failure\n"
        f"[ -x '{cfg.remote_pppd}' ] || fail \"no {cfg.remote_pppd}: apt-get install ppp\"\n"
        f"[ -x '{cfg.remote_ip}' ] || fail \"no {cfg.remote_ip}: install iproute2\"\n"
        f"[ -x '{SUDO}' ] || fail \"no {SUDO}: install sudo\"\n"
        f"[ -x '{PKILL}' ] || fail \"no {PKILL}: install procps\"\n"
        'command -v visudo >/dev/null || fail "no visudo: install sudo"\n'
        f"{_heredoc(staged, sudoers_text(cfg))}"
        f"chmod 440 '{staged}.new'\n"
        f"visudo -cqf '{staged}.new' || {{ rm -f '{staged}.new'; "
        f'fail "visudo refuses the sudoers text"; }}\n'
    )
    out.append(
        f"\n# 1. the link account: a system user without a password; sshd runs the helper\n"
        f"#    through its shell, so it needs /bin/sh\n"
        f"if ! id -u {user} >/dev/null 2>&1; then\n"
        f"\tuseradd --system --create-home --shell /bin/sh --comment 'pppssh link' {user}\n"
        f"\tusermod -p '*' {user}  # no password, and not marked locked (sshd refuses those)\n"
        f'\tsay "created account {user}"\n'
        f"elif [ \"$(passwd -S {user} | cut -d' ' -f2)\" = L ]; then\n"
        f'\tsay "warning: account {user} is locked; sshd without PAM refuses its key: '
        f"usermod -p '*' {user}\"\n"
        f"fi\n"
    )
    out.append(
        f"\n# 2. the helper, the only program the key can run\n"
        f"mkdir -p '{HELPER_PATH.rsplit('/', 1)[0]}'\n"
        f"{_install(HELPER_PATH, helper_text(), '755')}"
    )
    out.append(
        f"\n# 3. the site's policy (allow-list) and its pppd options, kept on this side\n"
        f"mkdir -p '{POLICY_DIR}' '{PEERS_DIR}'\n"
        f"{_install(f'{POLICY_DIR}/{name}.policy', policy_text(cfg), '644')}"
        f"{_install(f'{PEERS_DIR}/{cfg.linkname}', peers_text(cfg), '644')}"
    )
    out.append(
        f"\n# 4. sudo: exactly the helper's commands as root, nothing else\n"
        f"mv -f '{staged}.new' '{sudoers}'\n"
    )
    out.append(
        f"\n# 5. the key line (an older line for the same key is replaced)\n"
        f"home=$(getent passwd {user} | cut -d: -f6)\n"
        f'if [ -z "$home" ] || [ ! -d "$home" ]; then fail "account {user} has no home"; fi\n'
        f'[ ! -L "$home/.ssh" ] || fail "$home/.ssh is a symbolic link"\n'
        f'install -d -m 700 -o {user} -g "$(id -gn {user})" "$home/.ssh"\n'
        f"keys=$home/.ssh/authorized_keys\n"
        f'tmp=$(mktemp "$keys.XXXXXX")\n'
        f'if [ -f "$keys" ] && [ ! -L "$keys" ]; then\n'
        f'\tgrep -vF \'{blob}\' "$keys" >"$tmp" || :\n'
        f"fi\n"
        f"cat >>\"$tmp\" <<'{EOF_MARK}'\n{key_line(cfg, pubkey)}\n{EOF_MARK}\n"
        f'chown {user}: "$tmp"\n'
        f'chmod 600 "$tmp"\n'
        f'mv -f "$tmp" "$keys"\n'
    )
    out.append(f'\nsay "site {name} ready: {user}@$(hostname) runs only {HELPER_PATH} {name}"\n')
    return "".join(out)


def removal_script(cfg: SiteConfig, pubkey: str) -> str:
    """Undo setup_script: sudo first, then the key, policy, options, and what is unused."""
    user, name = cfg.user, cfg.name
    blob = pubkey.split()[1]
    title = (
        f"# pppssh remote-setup --remove of site {name}: run as root on {cfg.host}.\n"
        f"# Takes away the sudo rules, the key line, the policy and pppd options of the site;\n"
        f"# the helper once no site uses it, the account once it created it and no key is left."
    )
    out = [_PREAMBLE.format(title=title)]
    out.append(
        f"\nif [ -f {remote_pidfile(cfg)} ]; then\n"
        f'\tsay "note: the link of site {name} may still be up; stop it first (pppssh stop)"\n'
        f"fi\n"
        f"rm -f '{SUDOERS_DIR}/{sudoers_name(cfg)}' '{SUDOERS_DIR}/.{sudoers_name(cfg)}.new'\n"
        f"home=$(getent passwd {user} | cut -d: -f6) || home=''\n"
        f"keys=${{home:+$home/.ssh/authorized_keys}}\n"
        f'if [ -n "$keys" ] && [ -f "$keys" ] && [ ! -L "$keys" ]; then\n'
        f'\ttmp=$(mktemp "$keys.XXXXXX")\n'
        f'\tgrep -vF \'{blob}\' "$keys" >"$tmp" || :\n'
        f'\tchown {user}: "$tmp"\n'
        f'\tchmod 600 "$tmp"\n'
        f'\tmv -f "$tmp" "$keys"\n'
        f"fi\n"
        f"rm -f '{POLICY_DIR}/{name}.policy' '{PEERS_DIR}/{cfg.linkname}'\n"
        f"if ! ls '{POLICY_DIR}'/*.policy >/dev/null 2>&1; then\n"
        f"\trm -f '{HELPER_PATH}'\n"
        f"\trmdir '{POLICY_DIR}' 2>/dev/null || :\n"
        f"\trmdir '{POLICY_DIR.rsplit('/', 1)[0]}' 2>/dev/null || :\n"
        f"fi\n"
        f'if [ -n "$home" ] && [ "$(getent passwd {user} | cut -d: -f5)" = "pppssh link" ] &&\n'
        f'\t! grep -q . "$keys" 2>/dev/null; then\n'
        f"\tuserdel -r {user} 2>/dev/null || userdel {user}\n"
        f'\tsay "removed account {user}"\n'
        f"fi\n"
        f'say "site {name} removed from $(hostname)"\n'
    )
    return "".join(out)


async def apply(cfg: SiteConfig, script: str, admin: str, admin_identity: str | None) -> int:
    """Run the script as root on the remote gateway over an administrator's SSH login."""
    options: dict[str, object] = {}
    if admin_identity:
        try:
            options["client_keys"] = [asyncssh.read_private_key(admin_identity)]
        except (OSError, asyncssh.KeyImportError, ValueError) as exc:
            raise TunnelError(f"admin identity {admin_identity}: {exc}") from None
        options["agent_path"] = None
    if not cfg.known_hosts.is_file():
        raise TunnelError(f"known_hosts file {cfg.known_hosts} does not exist")
    try:
        async with asyncssh.connect(
            cfg.host, cfg.port, username=admin, known_hosts=str(cfg.known_hosts),
            config=None, password_auth=False, kbdint_auth=False, gss_auth=False,
            host_based_auth=False, connect_timeout=cfg.connect_timeout,
            **options,
        ) as conn:  # fmt: skip
            command = "sh -s" if admin == "root" else "sudo -n sh -s"
            result = await conn.run(command, input=script, check=False, errors="replace")
    except asyncssh.HostKeyNotVerifiable as exc:
        raise TunnelError(
            f"host key of {cfg.host}:{cfg.port} not accepted with {cfg.known_hosts}: {exc}"
        ) from None
    except asyncssh.PermissionDenied:
        raise TunnelError(f"{admin}@{cfg.host}:{cfg.port} refused the login") from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise TunnelError(f"cannot log in as {admin}@{cfg.host}:{cfg.port}: {exc}") from None
    for stream, text in ((sys.stdout, result.stdout), (sys.stderr, result.stderr)):
        if isinstance(text, str) and text:
            stream.write(text)
    status = result.exit_status
    return 0 if status == 0 else (status or 1)


def run_apply(cfg: SiteConfig, script: str, admin: str, admin_identity: str | None) -> int:
    """Synchronous wrapper for the CLI."""
    return asyncio.run(apply(cfg, script, admin, admin_identity))
