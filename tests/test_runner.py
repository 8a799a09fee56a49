"""The local command runner (adapters.SubprocessRunner) against a real thread and process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pppssh.adapters import SubprocessRunner
from pppssh.errors import CommandFailed
from pppssh.plan import Command


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
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
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
