"""The local command runner (adapters.SubprocessRunner) against a real thread and process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pppssh.adapters import SubprocessRunner
from pppssh.errors import CommandFailed
from pppssh.plan import Command


async def _cancelled_twice(task: asyncio.Future[Any]) -> bool:
    """Cancel task, and again 50 ms later; whether it then ended with CancelledError."""
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


def test_a_cancelled_command_ends_before_the_cancellation_goes_on(tmp_path: Path) -> None:
    """The thread cannot be stopped: cancelled while the command runs, run() waits for its
    end (what it changed is there) before it raises CancelledError, and a second
    cancellation meanwhile does not cut that wait short."""
    done = tmp_path / "done"
    command = Command(("sh", "-c", f"sleep 0.5; echo > {done}"))
    seen: list[bool] = []

    async def main() -> None:
        task = asyncio.ensure_future(SubprocessRunner().run(command))
        await asyncio.sleep(0.1)
        if await _cancelled_twice(task):
            seen.append(done.exists())

    asyncio.run(main())
    assert seen == [True]


def test_a_failing_command_cancelled_meanwhile_raises_the_cancellation(tmp_path: Path) -> None:
    """A command that fails after the cancellation: CancelledError, not CommandFailed (the
    task was asked to stop), and no exception is left unretrieved."""

    unhandled: list[dict[str, object]] = []

    async def main() -> str:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: unhandled.append(context)
        )
        task = asyncio.ensure_future(
            SubprocessRunner().run(Command(("sh", "-c", "sleep 0.3; exit 3")))
        )
        await asyncio.sleep(0.1)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    assert asyncio.run(main()) == "cancelled"
    assert unhandled == []


def test_output_and_failure(tmp_path: Path) -> None:
    """Not cancelled: its stdout, or CommandFailed with the status and stderr."""
    runner = SubprocessRunner()
    assert asyncio.run(runner.run(Command(("echo", "hi")))) == "hi\n"
    with pytest.raises(CommandFailed) as failed:
        asyncio.run(runner.run(Command(("sh", "-c", "echo no >&2; exit 4"))))
    assert (failed.value.status, failed.value.stderr) == (4, "no")


def _alive(pid: int) -> bool:
    """Whether pid is a process that is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("ignores_term", [False, True])
def test_a_cancelled_hook_and_its_children_end_before_the_cancellation_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ignores_term: bool
) -> None:
    """`stop` while the up command runs: its whole process group is stopped (SIGKILL after
    the grace when it ignores SIGTERM) before CancelledError goes on, well within the hook's
    own timeout; a second cancellation meanwhile does not cut that short."""
    monkeypatch.setattr("pppssh.adapters.HOOK_GRACE", 0.3)
    pids = tmp_path / "pids"
    trap = "trap '' TERM; " if ignores_term else ""
    script = f"{trap}sleep 60 & echo $$ $! > {pids}; wait"
    seen: list[object] = []

    async def main() -> None:
        task = asyncio.ensure_future(SubprocessRunner().hook(("sh", "-c", script), {}, 120.0))
        while not pids.exists() or not pids.read_text().endswith("\n"):
            await asyncio.sleep(0.02)
        if await _cancelled_twice(task):
            seen.append("cancelled")
        seen.extend(_alive(int(pid)) for pid in pids.read_text().split())

    asyncio.run(main())
    assert seen == ["cancelled", False, False]


def test_a_hook_not_cancelled_gives_its_output_and_failure() -> None:
    runner = SubprocessRunner()
    result = asyncio.run(runner.hook(("sh", "-c", "echo $SITE; exit 3"), {"SITE": "hq"}, 10.0))
    assert result.output == ["hq"]
    assert result.failure is not None and result.failure.status == 3
    assert asyncio.run(runner.hook(("true",), {}, 10.0)).failure is None
