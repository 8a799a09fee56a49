"""identity or known_hosts naming a directory: one `file:line: key:` line from start and check."""

from __future__ import annotations

from pathlib import Path

import pytest

from pppssh.cli import main

from .test_config import BASE


@pytest.mark.parametrize(("key", "number"), [("identity", 6), ("known_hosts", 7)])
@pytest.mark.parametrize("verb", ["start", "check"])
def test_key_file_that_is_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str, key: str, number: int
) -> None:
    (tmp_path / "id_ed25519").write_text("not read\n")
    (tmp_path / "id_ed25519").chmod(0o600)
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "adir").mkdir()
    conf = tmp_path / "site-b.conf"
    assert BASE.split("\n")[number - 1].startswith(f"{key} = ")
    conf.write_text(BASE.replace(f"{key} = {key if key == 'known_hosts' else 'id_ed25519'}",
                                 f"{key} = adir"))  # fmt: skip
    assert main([verb, str(conf)]) == 2
    out, err = capsys.readouterr()
    expected = f"{conf}:{number}: {key}: {key} {tmp_path / 'adir'} is a directory, not a file"
    if verb == "start":
        assert (out, err) == ("", f"pppssh: {expected}\n")
    else:
        assert (out, err) == (f"\u2717 site file valid: {expected}\n", "")
