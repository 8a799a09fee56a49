"""`pppssh remote-setup` for every gateway of `host`, and for sites whose key is not a file
(agent, token, or --public-key): over a real in-process SSH server and a real ssh-agent."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest

from pppssh import cli, trust
from pppssh.config import parse
from pppssh.remote_setup import authorised_key
from pppssh.ssh import TunnelError

from .sshserver import SSHTestServer
from .test_ssh import _start_agent


def _serve(
    tmp_path: Path, hosts: str, scripts: list[bytes], argv: list[str]
) -> tuple[int, SSHTestServer]:
    """Run `pppssh remote-setup --apply` as root against a server on 127.0.0.1 with the
    site's host set to hosts; scripts collects what each login was fed."""

    async def shell(process: asyncssh.SSHServerProcess[bytes]) -> None:
        scripts.append(await process.stdin.read())
        process.exit(0)

    srv = SSHTestServer(tmp_path, shell, user="root")

    async def main() -> int:
        async with srv:
            conf = tmp_path / "lab.conf"
            conf.write_text(srv.site_text(host=hosts, user="tunnel"))
            conf.chmod(0o600)
            args = ["remote-setup", "--apply", "--admin-identity", str(srv.identity)]
            return await asyncio.to_thread(cli.main, [*args, *argv, str(conf)])

    return asyncio.run(main()), srv


def test_every_gateway_is_set_up_in_order_and_failures_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """host = A, B, C: A unreachable, B set up, C's host key unknown: one line each, B's
    success not hidden, C refused before anything ran there, exit status non-zero."""
    scripts: list[bytes] = []
    status, srv = _serve(tmp_path, "127.0.0.2, 127.0.0.1, localhost", scripts, [])
    out = capsys.readouterr()
    assert status == 1, out.err
    assert out.out.splitlines()[-1] == f"pppssh remote-setup: 127.0.0.1:{srv.port}: set-up done"
    errors = out.err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"pppssh remote-setup: 127.0.0.2:{srv.port}: set-up failed: ")
    assert "cannot connect to 127.0.0.2" in errors[0]
    assert errors[1].startswith(f"pppssh remote-setup: localhost:{srv.port}: set-up failed: ")
    assert "unknown host key" in errors[1]
    assert len(scripts) == 1 and b"run as root on 127.0.0.1" in scripts[0]
    assert [s.command for s in srv.rec.sessions] == ["sh -s"]


def test_all_gateways_set_up_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two names of the same server, each with its host key in known_hosts: both set up."""
    scripts: list[bytes] = []

    srv_holder: list[SSHTestServer] = []
    original = SSHTestServer.__aenter__

    async def enter(self: SSHTestServer) -> SSHTestServer:
        """Also list the server's key under the name localhost."""
        got = await original(self)
        line = self.host_key_line.replace("127.0.0.1", "localhost")
        with self.known_hosts.open("a") as kh:
            kh.write(line + "\n")
        srv_holder.append(self)
        return got

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SSHTestServer, "__aenter__", enter)
        status, srv = _serve(tmp_path, "127.0.0.1, localhost", scripts, ["--remove"])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.splitlines()[-2:] == [
        f"pppssh remote-setup: 127.0.0.1:{srv.port}: removal done",
        f"pppssh remote-setup: localhost:{srv.port}: removal done",
    ]
    assert [b"run as root on 127.0.0.1" in s for s in scripts] == [True, False]
    assert b"run as root on localhost" in scripts[1] and b"--remove" in scripts[1]


def test_agent_only_site_authorises_the_agents_first_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No identity file: the key line carries the agent's key (the one start offers first);
    no agent key and no --public-key: one clear line."""
    folder = tmp_path / "agent"
    folder.mkdir(mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "id_token"))
    (tmp_path / "id_token").chmod(0o600)
    agent, sock = _start_agent(folder, tmp_path / "id_token")
    (tmp_path / "id_token").unlink()
    (tmp_path / "known_hosts").write_text("")
    top, trust.TOP = trust.TOP, str(tmp_path)
    try:
        conf = tmp_path / "lab.conf"
        text = SITE.replace("identity = id_ed25519\n", f"agent = {sock}\n")
        conf.write_text(text)
        assert cli.main(["remote-setup", str(conf)]) == 0
        pub = " ".join(key.export_public_key("openssh").decode().split()[:2])
        script = capsys.readouterr().out
        assert f" {pub} pppssh-lab" in script
        subprocess.run(["ssh-add", "-D", "-q"], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                       check=True, stderr=subprocess.DEVNULL)  # fmt: skip
        assert cli.main(["remote-setup", str(conf)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no usable key in its agent or token" in err
        assert "--public-key FILE" in err
    finally:
        trust.TOP = top
        agent.terminate()
        agent.wait()


SITE = """\
[site]
name = lab
[remote]
host = 198.51.100.2
user = tunnel
identity = id_ed25519
known_hosts = known_hosts
[ppp]
local_address = 192.168.77.1
remote_address = 192.168.77.2
[networks]
local = 10.1.0.0/24
remote = 10.2.0.0/24
"""


def test_public_key_option_is_read_through_trust(tmp_path: Path) -> None:
    """--public-key wins over the agent; a file another user could have written (it
    decides who may log in as the link account) is refused; a non-key is one line."""
    key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    pub_file = tmp_path / "token.pub"
    key.write_public_key(str(pub_file))
    (tmp_path / "known_hosts").write_text("")
    absent = f"agent = {tmp_path}/agent/absent.sock\n"
    cfg = parse(SITE.replace("identity = id_ed25519\n", absent), tmp_path / "lab.conf")
    top, trust.TOP = trust.TOP, str(tmp_path)
    try:
        pub = " ".join(key.export_public_key("openssh").decode().split()[:2])
        assert asyncio.run(authorised_key(cfg, pub_file)) == pub
        with pytest.raises(TunnelError, match=r"absent\.sock"):  # not given: the agent is asked
            asyncio.run(authorised_key(cfg))
        os.chown(pub_file, 1000, 1000)
        with pytest.raises(TunnelError, match="1000"):
            asyncio.run(authorised_key(cfg, pub_file))
        os.chown(pub_file, 0, 0)
        pub_file.write_text("not a key\n")
        with pytest.raises(TunnelError) as info:
            asyncio.run(authorised_key(cfg, pub_file))
        assert str(info.value).startswith(f"public key {pub_file}: ")
        assert "\n" not in str(info.value)
    finally:
        trust.TOP = top
