"""A bare NAME on the command line means CONF_DIR/NAME.conf, for every verb that takes a site."""

from __future__ import annotations

from pathlib import Path

import pytest

from pppssh import cli
from pppssh.cli import main

from .test_config import BASE


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private CONF_DIR holding site-b.conf."""
    conf_dir = tmp_path / "etc-pppssh"
    conf_dir.mkdir()
    (conf_dir / "site-b.conf").write_text(BASE)
    monkeypatch.setattr(cli, "CONF_DIR", conf_dir)
    return conf_dir


def test_routes_by_name_reads_the_file_in_conf_dir(
    etc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "--print", "site-b"]) == 0
    by_name = capsys.readouterr().out
    assert main(["routes", "--print", str(etc / "site-b.conf")]) == 0
    assert capsys.readouterr().out == by_name
    assert "10.2.0.0/24" in by_name


@pytest.mark.parametrize("verb", ["start", "check", "remote-setup", "routes"])
def test_missing_name_names_the_file_it_looked_for(
    etc: Path, verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [verb, "--print", "site-c"] if verb == "routes" else [verb, "site-c"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert f"{etc / 'site-c.conf'}: no such file\n" in out + err


@pytest.mark.parametrize("verb", ["start", "stop", "status", "check", "remote-setup", "routes"])
def test_an_argument_that_is_neither_a_name_nor_a_path_is_one_line(
    etc: Path, verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [verb, "--print", "bad name"] if verb == "routes" else [verb, "bad name"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "pppssh: 'bad name' is neither a site name (letters, digits, '_', '.', '-'; at most 32) "
        "nor a site file (a path with a '/' or ending in .conf)\n",
    )


def test_a_name_whose_file_names_another_site_is_refused(
    etc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (etc / "branch.conf").write_text(BASE)  # it says name = site-b
    assert main(["routes", "--print", "branch"]) == 2
    assert capsys.readouterr().err == (
        f"pppssh: {etc / 'branch.conf'}:2: name: site 'site-b' given as 'branch': "
        "`pppssh stop branch` would not find it; name the file site-b.conf or give its path\n"
    )


def test_stop_and_status_by_name_mean_the_site_name(
    etc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing runs: both answer about site-b by name, without needing its file.
    (etc / "site-b.conf").unlink()
    assert main(["stop", "site-b"]) == 0
    assert capsys.readouterr().out == "pppssh: site 'site-b' is not running\n"


def test_site_file_mapping() -> None:
    assert cli.site_file("site-b") == str(cli.CONF_DIR / "site-b.conf")
    assert cli.site_file("site-b.conf") == "site-b.conf"
    assert cli.site_file("./site-b") == "./site-b"
