"""A key on a PKCS#11 token (SoftHSM2, the token made by the test in its own folder through
SOFTHSM2_CONF): remote-setup authorises the token's key (the site has no key file), the link
comes up with it and `check` names it; a wrong PIN and a changed host key are refused."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import GW_B_WAN, Lab
from tests.lab.test_reach import up_and_down
from tests.lab.test_tunnel import no_leftovers, pppssh, show, stop_all

pytestmark = pytest.mark.lab
__all__ = ["stop_all"]  # the fixture, used by name below

OK = "\u2713"
SITE = "tokens"
PROVIDER = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "271828"
GENERATE = """
import sys, pkcs11
from pkcs11 import Attribute, KeyType
token = pkcs11.lib(sys.argv[1]).get_token(token_label="pppssh")
with token.open(rw=True, user_pin=sys.argv[2]) as session:
    session.generate_keypair(KeyType.RSA, 2048, store=True, label="link", id=b"\\x01",
                             private_template={Attribute.SIGN: True})
"""


@pytest.fixture(scope="module")
def token(lab: Lab) -> Iterator[Path]:
    """A SoftHSM2 token with an RSA key generated on it; SOFTHSM2_CONF for this process
    (remote-setup runs in it) and every pppssh it starts. Yields the token's folder."""
    folder = lab.dir / "softhsm"
    (folder / "tokens").mkdir(parents=True, mode=0o700)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "pppssh",
                        "--pin", PIN, "--so-pin", "31415926"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run([sys.executable, "-c", GENERATE, PROVIDER, PIN], check=True)
        yield folder
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old


def conf(lab: Lab, variant: str, pin: str, setup: bool = False, **remote: object) -> Path:
    """Site `tokens` with the token's key only (no identity file), its PIN file."""
    pin_file = lab.dir / f"{SITE}-{variant}.pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    sections = {"remote": {"identity": None, "pkcs11_provider": PROVIDER,
                           "pkcs11_pin_file": str(pin_file), **remote}}  # fmt: skip
    written = lab.write_site_conf(SITE, sections=sections, setup=setup)
    path = lab.dir / f"{SITE}-{variant}.conf"
    text = written.read_text()
    assert "identity" not in text and "pkcs11_provider" in text
    path.write_text(text)
    return path


def test_token_key_link_wrong_pin_changed_host_key(lab: Lab, token: Path, stop_all: None) -> None:
    """No key file anywhere: the link account authorises the token's key alone, the link
    comes up with it; a wrong PIN and a changed host key stop start in one line."""
    path = conf(lab, "good", PIN, setup=True)
    keys = Path(pwd.getpwnam(lab.user).pw_dir) / ".ssh" / "authorized_keys"
    lines = [line for line in keys.read_text().splitlines() if line.endswith(f"pppssh-{SITE}")]
    assert len(lines) == 1 and " ssh-rsa " in lines[0], lines
    checked = pppssh(lab, "check", str(path))
    assert checked.returncode == 0, show(checked)
    token_line = next(x for x in checked.stdout.splitlines() if "PKCS#11 token:" in x)
    assert token_line.startswith(f"{OK} ") and f"(PKCS#11 token {PROVIDER}, key link)" in token_line
    accepted = next(x for x in checked.stdout.splitlines() if "key accepted:" in x)
    assert accepted.endswith(f"(PKCS#11 token {PROVIDER}, key link)"), show(checked)
    up_and_down(lab, path)

    bad_pin = conf(lab, "badpin", "000000")
    proc = pppssh(lab, "start", str(bad_pin))
    assert proc.returncode != 0, show(proc)
    wrong = f"PKCS#11 token of {PROVIDER}: the PIN in {lab.dir / f'{SITE}-badpin.pin'} is wrong"
    assert proc.stderr.strip().endswith(wrong) and proc.stderr.count("\n") == 1, show(proc)
    print(f"attack/refusal: wrong PIN -> {proc.stderr.strip()}")

    other = lab.dir / "tokens_other_host_key"
    if not other.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                       check=True)  # fmt: skip
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    changed = lab.dir / "known_hosts.tokens-changed"
    changed.write_text(f"{GW_B_WAN} {kind} {blob}\n")
    before = {ns: lab.routes(ns) for ns in ("gw-a", "gw-b")}
    proc = pppssh(lab, "start", str(conf(lab, "changed", PIN, known_hosts=str(changed))))
    assert proc.returncode != 0, show(proc)
    assert f"HOST KEY CHANGED: {GW_B_WAN}:22 now presents" in proc.stderr, show(proc)
    assert {ns: lab.routes(ns) for ns in ("gw-a", "gw-b")} == before
    assert no_leftovers(lab) == []
    print(f"attack/refusal: changed host key with a token key -> {proc.stderr.strip()}")
