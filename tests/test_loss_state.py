"""A lost link's state file and systemd STATUS say so before its undo runs, not after (the
undo of a dead link can wait on the dead connection's timeouts)."""

from __future__ import annotations

import pytest

from pppssh.events import LinkDown, NotifyReporter
from pppssh.plan import Command
from pppssh.system import State
from tests.test_lifecycle import harness


@pytest.mark.parametrize(("reconnect", "expected"), [(True, "reconnecting"), (False, "stopping")])
def test_state_is_saved_when_the_loss_is_known(reconnect: bool, expected: str) -> None:
    h = harness(stop_when_up=False, reconnect=reconnect)
    seen_during_undo: list[State | None] = []
    run = h.ports.runner.run

    async def noting(command: Command) -> str:
        """The local route's undo notes what the state file says while it runs."""
        if command.argv[:3] == ("ip", "route", "del"):
            seen_during_undo.append(h.store.read("site-b"))
        return await run(command)

    h.ports.runner.run = noting  # type: ignore[method-assign]
    ups = [0]

    def lose_then_stop() -> None:
        """The SSH connection is lost once up; stop when up again."""
        ups[0] += 1
        assert h.world.transport is not None
        if ups[0] == 1:
            h.world.transport.lose("timed out")
        else:
            h.supervisor.stop("SIGTERM")

    h.recorder.on_ready = lose_then_stop
    assert h.run() == (0 if reconnect else 1)
    during = seen_during_undo[0]
    assert during is not None
    assert (during.state, during.up_since) == (expected, None)
    assert during.last_error is not None and during.last_error.startswith("link down: ")
    assert during.reconnects == 0, "the reconnect itself is counted when it is scheduled"
    if reconnect:
        assert h.store.history[-1]["reconnects"] == 1


def test_notify_says_reconnecting_or_stopping_at_the_loss() -> None:
    sent: list[tuple[str, ...]] = []
    notify = NotifyReporter(lambda *lines: sent.append(lines))
    notify.report(LinkDown("SSH connection lost: timed out", reconnecting=True))
    notify.report(LinkDown("remote pppd ended", reconnecting=False))
    assert sent == [
        ("STATUS=reconnecting: link down: SSH connection lost: timed out",),
        ("STATUS=stopping: link down: remote pppd ended",),
    ]
