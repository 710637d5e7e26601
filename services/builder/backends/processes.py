"""Running a command with its output streamed line by line (in a sandbox, when given one),
and finding the replicas this builder started among the machine's processes."""

import asyncio
import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from services.builder.backends.base import LogLine, StepFailed

STEP_MARK = "MODELCLOUD_BUILD_STEP"
_TAIL = 30
# How long output may still come once a step has exited: a child it left behind can hold
# the pipe open for ever.
_DRAIN_S = 2.0

# Turns a command and its working folder into the command that runs it sandboxed.
Wrap = Callable[[Sequence[str], Path], list[str]]


async def run_step(
    step: str,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: LogLine,
    timeout_s: float,
    wrap: Wrap | None = None,
) -> None:
    """Run ``argv`` (no shell), through ``wrap`` when given (a sandbox), logging each
    output line; raise :class:`StepFailed` with the last lines when it fails, cannot start,
    or outlives ``timeout_s``. However it ends, every process it started is stopped: its
    process group, and any process that left the group but still carries the step's mark
    in its environment."""
    executable = shutil.which(argv[0], path=env.get("PATH"))
    if executable is None:
        raise StepFailed(step, f"{argv[0]}: command not found")
    command = [executable, *argv[1:]]
    if wrap is not None:
        command = wrap(command, cwd)
    log(f"$ {step}")
    mark = uuid.uuid4().hex
    # The output pipe is ours, not the subprocess transport's: that one waits for every
    # writer to close the pipe before it reports the exit, and a child the step left
    # behind can hold it open for ever.
    read_end, write_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env={**env, STEP_MARK: mark},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    output = asyncio.StreamReader()
    pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(output), os.fdopen(read_end, "rb", buffering=0)
    )
    tail: list[str] = []
    pumping = asyncio.create_task(_pump(output, log, tail))
    try:
        await asyncio.wait_for(process.wait(), timeout_s)
        await asyncio.wait({pumping}, timeout=_DRAIN_S)  # what it wrote just before it exited
    except TimeoutError:
        raise StepFailed(step, f"still running after {timeout_s:.0f} s; stopped") from None
    finally:
        await asyncio.to_thread(_stop_leftovers, process.pid, mark)
        if process.returncode is None:  # not reaped yet, or it escaped both (see pipe below)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
        await asyncio.wait({pumping}, timeout=_DRAIN_S)
        pipe.close()  # a writer that escaped both the group and the mark is not waited for
        await asyncio.wait({pumping})
    if process.returncode != 0:
        shown = "\n".join(tail[-15:])
        raise StepFailed(step, f"exit code {process.returncode}\n{shown}")


async def _pump(output: asyncio.StreamReader, log: LogLine, tail: list[str]) -> None:
    while True:
        try:
            raw = await output.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:  # the last line, without a newline
            raw = end.partial
            if not raw:
                return
        except asyncio.LimitOverrunError as overrun:  # a line longer than the buffer: in pieces
            raw = await output.readexactly(overrun.consumed)
        line = raw.decode("utf-8", errors="replace").rstrip()
        log(line)
        tail.append(line)
        del tail[:-_TAIL]


def _stop_leftovers(group: int, mark: str) -> None:
    """Kill the step's process group, then every live process carrying ``mark`` (a daemon
    that called ``setsid``), looking again until none is left, as one may fork meanwhile."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    for _ in range(20):
        marked = [
            pid
            for pid in all_pids()
            if (process_environment(pid) or {}).get(STEP_MARK) == mark and process_alive(pid)
        ]
        if not marked:
            return
        for pid in marked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


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


def process_status(pid: int) -> tuple[str, int, int] | None:
    """A process's name, parent and process group, or ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.find("(") + 1 : stat.rfind(")")]
    fields = stat.rsplit(")", 1)[-1].split()
    return name, int(fields[1]), int(fields[2])
