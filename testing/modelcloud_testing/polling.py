"""Waiting for a condition that sends no event: a short poll with a deadline."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

# Short, so a wait ends soon after the change; not shorter, as each check of a build or a
# replica is a request that competes for the CPU with the build it waits for.
INTERVAL_S = 0.1


async def came_true(check: Callable[[], Any], timeout: float = 5) -> bool:
    """Whether a synchronous ``check()`` came true within ``timeout`` s: for state a test
    reads directly and that sends no event (a queue's length), where the test itself
    asserts, so a timeout is an answer rather than an error."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)  # the state is in this process: a cheap check
    return True


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    """The first true value ``check()`` returns, polling; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if value := await check():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        await asyncio.sleep(INTERVAL_S)


def wait_until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """``wait_for`` for synchronous checks (threads, subprocesses)."""
    deadline = time.monotonic() + timeout
    while True:
        if value := check():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: timed out after {timeout} s")
        time.sleep(INTERVAL_S)
