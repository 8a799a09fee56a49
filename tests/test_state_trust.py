"""stop, reconnect and recovery act on a state file (they signal the pids it names): each
reads it through the trust check, like status, and refuses one root must not believe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pppssh import system
from pppssh.cli import main
from pppssh.errors import Untrusted
from pppssh.system import write_state
from tests.test_metrics import up_state


def test_a_trusted_state_file_is_read(run_dir: Path) -> None:
    """The control: root's 0640 file of its own site."""
    write_state(up_state())
    state = system.read_state("site-b")
    assert state is not None and state.site == "site-b" and state.interface == "lo"


@pytest.mark.parametrize("how", ["symlink", "owner", "group-writable", "other-site"])
def test_stop_refuses_an_untrusted_state_file(
    run_dir: Path, tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state file that is a link to a user's file, not root's, writable by group, or naming
    another site: read_state raises Untrusted, and `stop` says so in one line and signals
    nothing (the pid it names, a live process here, is untouched)."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = up_state(pid=victim.pid)
        path = run_dir / "site-b.json"
        if how == "symlink":
            elsewhere = tmp_path / "elsewhere.json"
            elsewhere.write_text(json.dumps(state.__dict__))
            os.chown(elsewhere, 1000, 1000)
            path.symlink_to(elsewhere)
        else:
            write_state(state)
            if how == "owner":
                os.chown(path, 1000, 1000)
            elif how == "group-writable":
                path.chmod(0o660)
            else:
                data = json.loads(path.read_text())
                data["site"] = "site-c"
                path.write_text(json.dumps(data))
        with pytest.raises(Untrusted):
            system.read_state("site-b")
        assert main(["stop", "site-b"]) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "state file" in err, err
        assert victim.poll() is None, "stop signalled the pid of an untrusted state file"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
