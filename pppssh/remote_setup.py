"""`pppssh remote-setup`: what the remote gateway needs for a least-privilege link account.

The output is one POSIX sh script, run as root on the remote gateway. With `helper = yes` (the
default) it creates the link account, installs pppssh-helper, the site's policy (allow-list),
the remote pppd's options, a sudoers drop-in with exact commands, the link filter run by pppd's
ip-up/ip-down, and a key line that can only reach the helper. With `helper = no` it installs
the same pppd options, filter and sudoers drop-in, and a key line without a forced command: the
key then gives a login shell as the link account plus exactly those sudo commands. The same text
is printed for review or piped over an administrator's SSH login (`--apply`). Every value in it
was validated by config.py, and the files go in through quoted here-documents.
"""

from __future__ import annotations

import base64
import shlex
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from . import trust
from .asyncssh_compat import asyncssh
from .commands import (
    CONGESTION_PATH,
    HELPER_PATH,
    OLD_POLICY_DIR,
    PKILL,
    POLICY_DIR,
    SUDO,
    echo_adaptive_shell,
    helper_constants,
    peers_name,
    policy_text,
    remote_pidfile,
    root_ops,
    sudoers_rules,
    sudoers_word,
)
from .config import NO_IDENTITY, SiteConfig, server_text
from .linkfilter import PRIORITY, remote_filter
from .plan import Command, remote_pppd_options
from .sanitize import printable
from .ssh import (
    CERT_SUFFIX,
    TunnelError,
    agent_offers,
    close_connection,
    connect,
    load_identity,
    read_identity,
    token_offers,
)

__all__ = [
    "CONGESTION_PATH",
    "HELPER_PATH",
    "POLICY_DIR",
    "apply",
    "apply_all",
    "authorised_key",
    "congestion_text",
    "filter_lines",
    "helper_text",
    "ip_down_text",
    "ip_up_text",
    "key_line",
    "peers_name",
    "peers_text",
    "policy_text",
    "public_key",
    "removal_script",
    "setup_script",
    "sudo_commands",
    "sudoers_rules",
    "sudoers_text",
]

PEERS_DIR = "/etc/ppp/peers"
SUDOERS_DIR = "/etc/sudoers.d"
PPP_DIR = "/etc/ppp"
EOF_MARK = "PPPSSH_EOF"
# pppd options that take one argument (for one option per line in the peers file)
_WITH_ARGUMENT = {
    "linkname", "ipparam", "mtu", "mru", "lcp-echo-interval", "lcp-echo-failure", "deflate",
    "bsdcomp",
}  # fmt: skip
_sudoers_word = sudoers_word  # the name the tests know it by


def _shipped(name: str) -> str:
    """A program shipped with pppssh (pppssh/data/NAME) to run on the remote gateway."""
    return (resources.files("pppssh") / "data" / name).read_text(encoding="utf-8")


def helper_text() -> str:
    """The helper script shipped with pppssh, its settings (paths of the policies, sudo,
    pkill, pid files) rendered from the command model."""
    text = _shipped("pppssh-helper")
    for name, value in helper_constants().items():
        head, sep, tail = text.partition(f"\n{name}=")
        if not sep or f"\n{name}=" in tail:
            raise ValueError(f"pppssh-helper: no single {name}= line to set")
        rest = tail.partition("\n")[2]  # the file's own value is replaced
        text = f"{head}\n{name}={value}\n{rest}"
    return text


def congestion_text() -> str:
    """pppssh-congestion as shipped with pppssh (run as root there, through sudo)."""
    return _shipped("pppssh-congestion")


def public_key(cfg: SiteConfig) -> str:
    """`type base64` of the site's key: from the private key when usable, else its .pub (both
    read through the same trust checks as `start`)."""
    try:
        key = load_identity(cfg)
    except TunnelError as exc:
        pub = cfg.identity.with_name(cfg.identity.name + ".pub")
        try:
            key = asyncssh.import_public_key(trust.read_trusted(pub, "public key").data)
        except (trust.Untrusted, asyncssh.KeyImportError, ValueError):
            raise TunnelError(
                f"{exc}; nor is {pub} usable; make the key with: "
                f"ssh-keygen -t ed25519 -N '' -f {cfg.identity}"
            ) from None
    kind, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
    return f"{kind} {blob}"


def given_public_key(path: Path) -> str:
    """`type base64` of a public key file named with --public-key, read through trust: the key
    it holds is the one the link account will accept, so only root may have written it."""
    try:
        data = trust.read_trusted(path, "public key").data
        key = asyncssh.import_public_key(data)
    except trust.Untrusted as exc:
        raise TunnelError(str(exc)) from None
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise TunnelError(f"public key {path}: {printable(str(exc))}") from None
    kind, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
    return f"{kind} {blob}"


def _plain_public(public_data: bytes) -> str | None:
    """`type base64` of an offered key's public blob; None for a certificate (a certificate
    login is authorised by the CA, not by a key line)."""
    try:
        length = int.from_bytes(public_data[:4], "big")
        kind = public_data[4 : 4 + length].decode("ascii")
    except (UnicodeDecodeError, ValueError):
        return None
    if kind.endswith(CERT_SUFFIX) or not kind:
        return None
    key = asyncssh.import_public_key(f"{kind} {base64.b64encode(public_data).decode()}")
    kind, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
    return f"{kind} {blob}"


async def authorised_key(cfg: SiteConfig, given: Path | None = None) -> str:
    """The public key the link account is to accept: --public-key's, else the identity
    file's, else the first key `start` would offer from the agent or token; one-line error
    if none."""
    if given is not None:
        return given_public_key(given)
    if cfg.identity != NO_IDENTITY:
        return public_key(cfg)
    offers: list[tuple[str, asyncssh.SSHKeyPair]] = []
    if cfg.agent:
        offers, agent = await agent_offers(cfg)
        agent.close()
    if cfg.pkcs11_provider:
        offers += await token_offers(cfg)
    for _label, pair in offers:
        try:
            text = _plain_public(pair.public_data)
        except (asyncssh.KeyImportError, ValueError):
            continue
        if text is not None:
            return text
    raise TunnelError(
        f"{cfg.path}: no public key to authorise: the site has no identity file and "
        "no usable key in its agent or token; "
        f"give one with --public-key FILE"
    )


file_name = peers_name  # every file remote-setup writes for a site has this name


def sudoers_name(cfg: SiteConfig) -> str:
    """The drop-in's file name (sudo skips names with a dot)."""
    return file_name(cfg)


def key_line(cfg: SiteConfig, pubkey: str) -> str:
    """The authorized_keys line: no forwarding, a pty, and (with the helper) only the helper."""
    options = ["restrict", "pty"]
    if cfg.helper:
        options.append(f'command="{HELPER_PATH} {cfg.name}"')
    if cfg.key_from:
        options.append(f'from="{",".join(cfg.key_from)}"')
    return f"{','.join(options)} {pubkey} {cfg.linkname}"


def peers_text(cfg: SiteConfig, echo_adaptive: bool = False) -> str:
    """Options of this gateway's pppd, fixed on the remote side (`pppd call pppssh-SITE`);
    `lcp-echo-adaptive` only with echo_adaptive (that pppd has the fix of ppp-project #323)."""
    lines = [
        f"# pppd options of pppssh site {cfg.name}, written by `pppssh remote-setup`.",
        "# The device is the pty sshd gives the link account; the client cannot add options.",
    ]
    if cfg.lcp_echo_interval and not echo_adaptive:
        lines.append(
            "# No lcp-echo-adaptive: this pppd is older than 2.5.0 (ppp-project #323), so an echo "
            "goes every interval."
        )
    words = remote_pppd_options(cfg, echo_adaptive)
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


def sudo_commands(cfg: SiteConfig) -> list[tuple[str, ...]]:
    """Exactly the commands pppssh (or the helper for it) runs as root on the remote gateway,
    as argv: the operations of the command model that need root (commands.root_ops), the one
    source of every sudo rule remote-setup writes and `check` suggests."""
    return [op.argv for op in root_ops(cfg)]


def sudoers_text(cfg: SiteConfig) -> str:
    """The sudoers drop-in: the link account may run these exact commands, nothing else."""
    user = cfg.user
    via = f"they come from {HELPER_PATH}" if cfg.helper else "pppssh runs them over SSH"
    lines = [
        f"# pppssh site {cfg.name}, written by `pppssh remote-setup`: {user} may run exactly",
        f"# these commands as root ({via}), nothing else.",
        f"Defaults:{user} !requiretty",
        "# pppd talks straight to the pty sshd gives it; no second pty from sudo.",
        f"Defaults:{user} !use_pty",
        *sudoers_rules(cfg),
    ]
    return "\n".join(lines) + "\n"


def filter_lines(cfg: SiteConfig, family: int = 4) -> list[str]:
    """Shell lines that filter what arrives from the link on interface "$IF" of the remote
    gateway: linkfilter.remote_filter's commands (the local side's, with the remote networks)
    for one address family, after removing what an earlier pppd of the site left."""
    flag = f"-{family}"
    steps = [
        step for step in remote_filter(cfg, "$IF")
        if (flag in step.apply.argv) or (family == 4 and step.undo is None)
    ]  # fmt: skip
    return [*_unfilter_lines(cfg, family), *(_shell_with_if(step.apply) for step in steps)]


def _shell_with_if(command: Command) -> str:
    """A command as a shell line in which "$IF" (alone or inside a word) is expanded."""
    return " ".join(f'"{word}"' if "$IF" in word else shlex.quote(word) for word in command.argv)


def _unfilter_lines(cfg: SiteConfig, family: int = 4) -> list[str]:
    """Shell lines that remove the link filter's rules of interface "$IF" (and old ones that a
    pppd killed before its ip-down left behind)."""
    ip = f"{cfg.remote_ip} -{family}"
    return [
        f'while {ip} rule del iif "$IF" priority {prio} 2>/dev/null; do :; done'
        for prio in (PRIORITY, PRIORITY + 1)
    ]


def _hook_text(cfg: SiteConfig, what: str, body: list[str]) -> str:
    """A script for /etc/ppp/ip-up.d (or ip-down.d, ipv6-up.d ...) that acts only for this
    site's remote pppd (its ipparam and linkname) on a pppN interface."""
    lines = [
        "#!/bin/sh",
        f"# pppssh site {cfg.name}, written by `pppssh remote-setup`: {what}.",
        "# pppd runs it as root (through Debian's /etc/ppp/ip-up and run-parts) for every link; it",
        "# acts only for this site's pppd, whose ipparam and linkname are fixed in its peers file.",
        "set -u",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        f"[ \"${{PPP_IPPARAM-}}\" = '{cfg.linkname}' ] || exit 0",
        f"[ \"${{LINKNAME-}}\" = '{cfg.remote_linkname}' ] || exit 0",
        "case ${PPP_IFACE-} in",
        "ppp | ppp*[!0-9]*) exit 0 ;;",
        "ppp[0-9]*) ;;",
        "*) exit 0 ;;",
        "esac",
        "IF=$PPP_IFACE",
        *body,
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def ip_up_text(cfg: SiteConfig) -> str:
    """/etc/ppp/ip-up.d/pppssh-SITE: the link filter, installed as the link comes up."""
    return _hook_text(cfg, "filter what arrives from the link", filter_lines(cfg))


def ip_down_text(cfg: SiteConfig) -> str:
    """/etc/ppp/ip-down.d/pppssh-SITE: the link filter's rules removed as the link goes."""
    return _hook_text(cfg, "remove the link filter", _unfilter_lines(cfg))


def ipv6_up_text(cfg: SiteConfig) -> str:
    """/etc/ppp/ipv6-up.d/pppssh-SITE: routes to the site's IPv6 networks on the link (their
    interface is known only now, so no sudo rule could name it) and their filter."""
    routes = [f'{cfg.remote_ip} -6 route add {net} dev "$IF"' for net in cfg.local_networks6]
    return _hook_text(cfg, "IPv6 routes and filter", [*routes, *filter_lines(cfg, 6)])


def ipv6_down_text(cfg: SiteConfig) -> str:
    """/etc/ppp/ipv6-down.d/pppssh-SITE: the IPv6 filter's rules removed."""
    return _hook_text(cfg, "remove the IPv6 filter", _unfilter_lines(cfg, 6))


def hook_files(cfg: SiteConfig) -> dict[str, str]:
    """The pppd hook scripts of the site, by path."""
    name = file_name(cfg)
    files = {
        f"{PPP_DIR}/ip-up.d/{name}": ip_up_text(cfg),
        f"{PPP_DIR}/ip-down.d/{name}": ip_down_text(cfg),
    }
    if cfg.ipv6:
        files[f"{PPP_DIR}/ipv6-up.d/{name}"] = ipv6_up_text(cfg)
        files[f"{PPP_DIR}/ipv6-down.d/{name}"] = ipv6_down_text(cfg)
    return files


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
cd /
say() {{ printf 'pppssh remote-setup: %s\\n' "$*"; }}
fail() {{ printf 'pppssh remote-setup: %s\\n' "$*" >&2; exit 1; }}
[ "$(id -u)" = 0 ] || fail "run this as root on the remote gateway"
"""

# Run as the link account (runuser), so that nothing it owns can turn root's hand: it replaces
# the site's key line in its own authorized_keys, or (with no line) removes it.
_AS_USER = """\
set -eu
umask 077
dir=$1 blob=$2 line=${3-}
[ ! -L "$dir" ] || { echo "$dir is a symbolic link; refusing" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"
keys=$dir/authorized_keys
[ ! -L "$keys" ] || { echo "$keys is a symbolic link; refusing" >&2; exit 1; }
[ -n "$line" ] || [ -f "$keys" ] || exit 0
tmp=$(mktemp "$keys.XXXXXX")
if [ -f "$keys" ]; then grep -vF -- "$blob" "$keys" >"$tmp" || :; fi
if [ -n "$line" ]; then printf '%s\\n' "$line" >>"$tmp"; fi
chmod 600 "$tmp"
mv -f "$tmp" "$keys"
"""


def _keys_lines(user: str, blob: str, line: str) -> str:
    """Shell lines that put line (or, when empty, no line) for the key blob in the account's
    authorized_keys, written by the account itself (root never writes in its directory)."""
    args = shlex.quote(blob) + (f" {shlex.quote(line)}" if line else "")
    return (
        f'[ ! -L "$home/.ssh" ] || fail "$home/.ssh is a symbolic link; refusing"\n'
        f'[ ! -L "$home/.ssh/authorized_keys" ] || '
        f'fail "$home/.ssh/authorized_keys is a symbolic link; refusing"\n'
        f"runuser -u {user} -- /bin/sh -s \"$home/.ssh\" {args} <<'{EOF_MARK}' ||\n"
        f"{_AS_USER}{EOF_MARK}\n"
        f'\tfail "cannot write the key line as {user}"\n'
    )


def _unused_congestion_lines() -> str:
    """Shell lines that remove pppssh-congestion once no sudo rule runs it."""
    return (
        f"if ! grep -qsF '{CONGESTION_PATH}' '{SUDOERS_DIR}'/*; then  # no site runs it\n"
        f"\trm -f '{CONGESTION_PATH}'\n"
        f"fi\n"
    )


def _old_policy_lines() -> str:
    """Shell lines that move every policy from where they were kept before into POLICY_DIR
    (the helper installed is the one of every site, and reads only there), a policy already
    there winning, and remove that directory once empty."""
    return (
        f"if [ -d '{OLD_POLICY_DIR}' ] && [ ! -L '{OLD_POLICY_DIR}' ]; then\n"
        f"\tfor old in '{OLD_POLICY_DIR}'/*.policy; do\n"
        f'\t\tif [ ! -f "$old" ] || [ -L "$old" ]; then continue; fi\n'
        f"\t\tnew='{POLICY_DIR}'/${{old##*/}}\n"
        f'\t\tif [ ! -e "$new" ]; then\n'
        f'\t\t\tcp "$old" "$new.new" && chown root:root "$new.new" && chmod 644 "$new.new" &&\n'
        f'\t\t\t\tmv -f "$new.new" "$new"\n'
        f'\t\t\tsay "moved the helper policy ${{old##*/}} from {OLD_POLICY_DIR} to {POLICY_DIR}"\n'
        f"\t\telse\n"
        f'\t\t\tsay "removed the outdated helper policy $old"\n'
        f"\t\tfi\n"
        f'\t\trm -f "$old"\n'
        f"\tdone\n"
        f"\trmdir '{OLD_POLICY_DIR}' 2>/dev/null || :\n"
        f"fi\n"
    )


def setup_script(cfg: SiteConfig, pubkey: str) -> str:
    """The whole set-up, as a script for root on the remote gateway (safe to run again)."""
    user, name = cfg.user, cfg.name
    safe = file_name(cfg)
    sudoers = f"{SUDOERS_DIR}/{sudoers_name(cfg)}"
    staged = f"{SUDOERS_DIR}/.{sudoers_name(cfg)}"  # sudo ignores names with a dot
    blob = pubkey.split()[1]
    mode = (
        f"a key line that can only reach {HELPER_PATH}"
        if cfg.helper
        else "a key line without a forced command (helper = no: a login shell as the account)"
    )
    title = (
        f"# pppssh remote-setup of site {name}: run as root on {cfg.host}.\n"
        f"# Creates the link account {user} (no password) if missing, installs the site's pppd\n"
        f"# options and link filter, a sudoers drop-in with exact commands, and\n"
        f"# {mode}. Running it again changes nothing more."
    )
    out = [_PREAMBLE.format(title=title)]
    out.append(
        "\n# 0. check first, change nothing on failure\n"
        f"[ -x '{cfg.remote_pppd}' ] || fail \"no {cfg.remote_pppd}: apt-get install ppp\"\n"
        f"[ -x '{cfg.remote_ip}' ] || fail \"no {cfg.remote_ip}: install iproute2\"\n"
        f"[ -x '{SUDO}' ] || fail \"no {SUDO}: install sudo\"\n"
        f"[ -x '{PKILL}' ] || fail \"no {PKILL}: install procps\"\n"
        'command -v visudo >/dev/null || fail "no visudo: install sudo"\n'
        'command -v runuser >/dev/null || fail "no runuser: install util-linux"\n'
        f"if ! {{ [ -x {PPP_DIR}/ip-up ] &&\n"
        f"\tgrep -q 'run-parts {PPP_DIR}/ip-up.d' {PPP_DIR}/ip-up; }}; then\n"
        f'\tfail "{PPP_DIR}/ip-up does not run {PPP_DIR}/ip-up.d (the link filter needs it)"\n'
        f"fi\n"
        f"[ ! -e {PPP_DIR}/ip-up.local ] ||\n"
        f'\tfail "{PPP_DIR}/ip-up.local replaces {PPP_DIR}/ip-up.d (the link filter needs it)"\n'
        f"#    lcp-echo-adaptive only for a pppd with the fix of ppp-project #323 (2.5.0 on)\n"
        f"{echo_adaptive_shell(cfg.remote_pppd)}"
        f"{_heredoc(staged, sudoers_text(cfg))}"
        f"chmod 440 '{staged}.new'\n"
        f"visudo -cqf '{staged}.new' || {{ rm -f '{staged}.new'; "
        f'fail "visudo refuses the sudoers text"; }}\n'
    )
    out.append(
        f"\n# 1. the link account: a system user without a password; sshd runs its commands\n"
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
    if cfg.helper:
        out.append(
            f"\n# 2. the helper, the only program the key can run, and the site's policy\n"
            f"mkdir -p '{HELPER_PATH.rsplit('/', 1)[0]}'\n"
            f"{_install(HELPER_PATH, helper_text(), '755')}"
            f"#    the policy holds no secret, and the helper (the link account) must read it:\n"
            f"#    its own root-owned 0755 directory, made right on every run\n"
            f"[ ! -L '{POLICY_DIR}' ] || fail \"{POLICY_DIR} is a symbolic link; refusing\"\n"
            f"mkdir -p '{POLICY_DIR}'\n"
            f"chown root:root '{POLICY_DIR}'\n"
            f"chmod 755 '{POLICY_DIR}'\n"
            f"{_install(f'{POLICY_DIR}/{safe}.policy', policy_text(cfg), '644')}"
            f"{_old_policy_lines()}"
        )
    else:
        out.append(
            "\n# 2. no helper (helper = no): the key gives a login shell as the account, which\n"
            "#    may run exactly the sudo commands below as root\n"
        )
    if cfg.tcp_congestion_down:
        out.append(
            f"\n#    the way down's congestion control, {cfg.tcp_congestion_down}: a program\n"
            f"#    that sets it on the session's own sshd socket, as root, by the sudo line\n"
            f"mkdir -p '{CONGESTION_PATH.rsplit('/', 1)[0]}'\n"
            f"{_install(CONGESTION_PATH, congestion_text(), '755')}"
            f'[ -x /usr/bin/python3 ] || say "warning: no /usr/bin/python3, which '
            f"{CONGESTION_PATH} needs: the way down keeps the system's congestion control "
            f'(apt-get install python3-minimal)"\n'
        )
    peers = f"{PEERS_DIR}/{peers_name(cfg)}"
    if peers_text(cfg, True) == peers_text(cfg, False):  # lcp_echo_interval = 0: no echoes
        write_peers = _install(peers, peers_text(cfg), "644")
    else:
        write_peers = (
            'if [ "$echo_adaptive" = yes ]; then\n'
            f"{_install(peers, peers_text(cfg, True), '644')}"
            "else\n"
            f"{_install(peers, peers_text(cfg, False), '644')}"
            f'say "{cfg.remote_pppd} is pppd ${{pppd_version:-of unknown version}}, '
            'older than 2.5.0: LCP echoes without lcp-echo-adaptive (ppp-project #323)"\n'
            "fi\n"
        )
    out.append(
        f"\n# 3. the site's pppd options, and the link filter pppd runs as the link comes, goes\n"
        f"mkdir -p '{PEERS_DIR}'\n"
        f"{write_peers}"
    )
    for path, text in hook_files(cfg).items():
        out.append(f"mkdir -p '{path.rsplit('/', 1)[0]}'\n{_install(path, text, '755')}")
    out.append(
        'if [ "$(cat /proc/sys/net/ipv4/conf/all/rp_filter 2>/dev/null)" = 2 ]; then\n'
        '\tsay "warning: net.ipv4.conf.all.rp_filter = 2 (loose) overrides the strict filter '
        'on the link: sysctl -w net.ipv4.conf.all.rp_filter=0 (or 1)"\n'
        "fi\n"
    )
    out.append(
        f"\n# 4. sudo: exactly the commands pppssh runs as root, nothing else\n"
        f"mv -f '{staged}.new' '{sudoers}'\n"
    )
    if not cfg.tcp_congestion_down:  # an earlier set-up's program, now run by no site
        out.append(_unused_congestion_lines())
    out.append(
        f"\n# 5. the key line (an older line for the same key is replaced), written as {user}\n"
        f"home=$(getent passwd {user} | cut -d: -f6)\n"
        f'if [ -z "$home" ] || [ ! -d "$home" ]; then fail "account {user} has no home"; fi\n'
        f"{_keys_lines(user, blob, key_line(cfg, pubkey))}"
    )
    what = (
        f"runs only {HELPER_PATH} {name}" if cfg.helper else "may sudo exactly the link's commands"
    )
    out.append(f'\nsay "site {name} ready: {user}@$(hostname) {what}"\n')
    return "".join(out)


def _stop_lines(cfg: SiteConfig, blob: str) -> str:
    """Shell lines that stop the site's link before anything is removed: its pppd (through
    its pid file), the filter rules of a link still up (ip-down does not run after KILL), and,
    when the account is to go, every process of the account (helper, sshd session); they fail,
    with nothing removed, if something cannot be stopped, and say in one line what they did."""
    user, pidfile = cfg.user, remote_pidfile(cfg)
    unfilter = "".join(f"\t{line}\n" for fam in (4, 6) for line in _unfilter_lines(cfg, fam))
    return (
        f"\n# 1. stop the site's link first, so that nothing is left half-removed\n"
        f"# wait_gone COMMAND...: up to 10 s for COMMAND (a pgrep) to find nothing\n"
        f"wait_gone() {{\n"
        f"\ttries=0\n"
        f'\twhile "$@" >/dev/null 2>&1; do\n'
        f"\t\ttries=$((tries + 1))\n"
        f'\t\t[ "$tries" -le 20 ] || return 1\n'
        f"\t\tsleep 0.5\n"
        f"\tdone\n"
        f"}}\n"
        f"# stop_account: TERM, then KILL, every process of the account; sets left on failure\n"
        f"stop_account() {{\n"
        f"\tleft=''\n"
        f"\tid -u {user} >/dev/null 2>&1 || return 0\n"
        f"\tpgrep -u {user} >/dev/null 2>&1 || return 0\n"
        f"\tstopped=$((stopped + $(pgrep -u {user} | grep -c . || :)))\n"
        f"\tpkill -TERM -u {user} || :\n"
        f"\twait_gone pgrep -u {user} && return 0\n"
        f"\tpkill -KILL -u {user} || :\n"
        f"\twait_gone pgrep -u {user} && return 0\n"
        f"\tleft=\"processes $(pgrep -u {user} | tr '\\n' ' ')of {user}\"\n"
        f"\treturn 1\n"
        f"}}\n"
        f"stopped=0 did=''\n"
        f"# the link's interface, while it is up: its filter rules go with it\n"
        f"IF=$({cfg.remote_ip} -o -4 addr show | while read -r _ ifname family address word "
        f"remote _; do\n"
        f'\tif [ "$family" = inet ] && [ "$address" = {cfg.remote_address} ] &&\n'
        f'\t\t[ "$word" = peer ] && [ "$remote" = {cfg.local_address}/32 ]; then\n'
        f"\t\tprintf '%s\\n' \"${{ifname%%@*}}\"\n"
        f"\tfi\n"
        f"done | head -n 1)\n"
        f"if pgrep -x -F {pidfile} pppd >/dev/null 2>&1; then\n"
        f"\tpid=$(head -n 1 {pidfile} 2>/dev/null) || pid='?'  # then pppd's interface\n"
        f"\tpkill -TERM -x -F {pidfile} pppd || :\n"
        f"\tif ! wait_gone pgrep -x -F {pidfile} pppd; then\n"
        f"\t\tpkill -KILL -x -F {pidfile} pppd || :\n"
        f"\t\twait_gone pgrep -x -F {pidfile} pppd ||\n"
        f'\t\t\tfail "cannot stop pppd $pid of site {cfg.name}; nothing removed"\n'
        f"\tfi\n"
        f'\tdid="pppd $pid"\n'
        f"fi\n"
        f"home=$(getent passwd {user} | cut -d: -f6) || home=''\n"
        f"# the account goes (below) when pppssh made it and holds no other key: stop it all now\n"
        f"# shellcheck disable=SC2016 # the account's own shell expands $1 and $2\n"
        f'if [ -n "$home" ] && [ "$(getent passwd {user} | cut -d: -f5)" = "pppssh link" ] &&\n'
        f"\t! runuser -u {user} -- /bin/sh -c \\\n"
        f'\t\t\'grep -vF -- "$1" "$2" | grep -q .\' sh {shlex.quote(blob)} \\\n'
        f'\t\t"$home/.ssh/authorized_keys" 2>/dev/null; then\n'
        f'\tstop_account || fail "cannot stop $left; nothing removed"\n'
        f"fi\n"
        f'if [ -n "$IF" ]; then\n'
        f"{unfilter}"
        f'\tdid="${{did:+$did, }}the filter rules of $IF"\n'
        f"fi\n"
        f'[ "$stopped" -eq 0 ] || did="${{did:+$did, }}$stopped process(es) of {user}"\n'
        f'[ -z "$did" ] || say "stopped the link of site {cfg.name}: $did"\n'
    )


def removal_script(cfg: SiteConfig, pubkey: str) -> str:
    """Undo setup_script: stop the site's link, then sudo first, the key, policy, options, and
    what is unused."""
    user, name = cfg.user, cfg.name
    safe = file_name(cfg)
    blob = pubkey.split()[1]
    title = (
        f"# pppssh remote-setup --remove of site {name}: run as root on {cfg.host}.\n"
        f"# Stops the site's link if it is up (nothing is removed if that fails), then takes away\n"
        f"# the sudo rules, the key line, the policy, pppd options and link filter of\n"
        f"# the site; the helper once no site uses it, the account once it created it and no key\n"
        f"# is left."
    )
    hooks = " ".join(
        f"'{PPP_DIR}/{d}/{safe}'" for d in ("ip-up.d", "ip-down.d", "ipv6-up.d", "ipv6-down.d")
    )
    out = [_PREAMBLE.format(title=title)]
    out.append(_stop_lines(cfg, blob))
    out.append(
        f"\n# 2. then the files: sudo first, so that nothing of the site can run as root\n"
        f"rm -f '{SUDOERS_DIR}/{sudoers_name(cfg)}' '{SUDOERS_DIR}/.{sudoers_name(cfg)}.new'\n"
        f"home=$(getent passwd {user} | cut -d: -f6) || home=''\n"
        f'if [ -n "$home" ] && [ -d "$home" ]; then\n'
        f"{_keys_lines(user, blob, '')}"
        f"fi\n"
        f"rm -f '{POLICY_DIR}/{safe}.policy' '{PEERS_DIR}/{peers_name(cfg)}' {hooks}\n"
        f"rm -f '{OLD_POLICY_DIR}/{safe}.policy'\n"
        f"rmdir '{OLD_POLICY_DIR}' 2>/dev/null || :\n"
        f"if ! ls '{POLICY_DIR}'/*.policy >/dev/null 2>&1; then\n"
        f"\trm -f '{HELPER_PATH}'\n"
        f"\trmdir '{POLICY_DIR}' 2>/dev/null || :\n"
        f"fi\n"
        f"{_unused_congestion_lines()}"
        f'if [ -n "$home" ] && [ "$(getent passwd {user} | cut -d: -f5)" = "pppssh link" ] &&\n'
        f'\t! grep -q . "$home/.ssh/authorized_keys" 2>/dev/null; then\n'
        f'\tstop_account || fail "cannot stop $left; account {user} kept"\n'
        f"\tuserdel -r {user} 2>/dev/null || userdel {user} 2>/dev/null ||\n"
        f'\t\tfail "userdel {user} failed; the site\'s files are removed, the account is kept"\n'
        f'\tsay "removed account {user}"\n'
        f"fi\n"
        f'say "site {name} removed from $(hostname)"\n'
    )
    return "".join(out)


async def apply(cfg: SiteConfig, script: str, admin: str, admin_identity: str | None) -> int:
    """Run the script as root on the remote gateway over an administrator's SSH login, with
    the same host key check and algorithms as the link (ssh.connect)."""
    keys = [read_identity(Path(admin_identity), "admin identity")] if admin_identity else None
    conn, _client = await connect(
        cfg, username=admin, client_keys=keys, default_keys=not admin_identity
    )
    try:
        command = "sh -s" if admin == "root" else "sudo -n sh -s"
        result = await conn.run(command, input=script, check=False, errors="replace")
    except (OSError, asyncssh.Error) as exc:
        raise TunnelError(
            f"{admin}@{cfg.host}:{cfg.port}: the set-up did not finish: {printable(str(exc))}"
        ) from None
    finally:
        await close_connection(conn)
    for stream, text in ((sys.stdout, result.stdout), (sys.stderr, result.stderr)):
        if isinstance(text, str) and text:  # the remote's words: shown line by line, escaped
            stream.write("".join(printable(line, 1000) + "\n" for line in text.splitlines()))
    status = result.exit_status
    return 0 if status == 0 else (status or 1)


async def apply_all(
    cfg: SiteConfig,
    scripts: Callable[[SiteConfig], str],
    admin: str,
    admin_identity: str | None,
) -> list[tuple[str, int, str]]:
    """Apply the set-up to every gateway of `host`, in order, each with its own host key
    check; one failure does not stop the others. Returns (gateway, status, why) each."""
    results: list[tuple[str, int, str]] = []
    for index, server in enumerate(cfg.servers):
        at = cfg.at_server(index)
        try:
            status = await apply(at, scripts(at), admin, admin_identity)
        except TunnelError as exc:
            results.append((server_text(server), 1, str(exc)))
            continue
        why = "" if status == 0 else f"the script exited with status {status}"
        results.append((server_text(server), status, why))
    return results
