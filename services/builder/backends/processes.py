"""Running a command with its output streamed line by line, and finding the replicas this
builder started among the machine's processes."""

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.builder.backends.base import LogLine, StepFailed

_TAIL = 30


async def run_step(
    step: str,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: LogLine,
    timeout_s: float,
) -> None:
    """Run ``argv`` (no shell), logging each output line; raise :class:`StepFailed` with the
    last lines when it fails, cannot start, or outlives ``timeout_s``."""
    executable = shutil.which(argv[0], path=env.get("PATH"))
    if executable is None:
        raise StepFailed(step, f"{argv[0]}: command not found")
    log(f"$ {step}")
    process = await asyncio.create_subprocess_exec(
        executable,
        *argv[1:],
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    tail: list[str] = []

    async def pump() -> None:
        assert process.stdout is not None  # noqa: S101 - asked for above
        async for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            log(line)
            tail.append(line)
            del tail[:-_TAIL]

    try:
        await asyncio.wait_for(asyncio.gather(pump(), process.wait()), timeout_s)
    except TimeoutError:
        _kill_group(process.pid)
        await process.wait()
        raise StepFailed(step, f"still running after {timeout_s:.0f} s; stopped") from None
    except BaseException:
        _kill_group(process.pid)
        raise
    if process.returncode != 0:
        shown = "\n".join(tail[-15:])
        raise StepFailed(step, f"exit code {process.returncode}\n{shown}")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def process_environment(pid: int) -> dict[str, str] | None:
    """A process's environment, or ``None`` when it is gone or not ours to read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def process_alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
