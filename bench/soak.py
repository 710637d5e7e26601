"""Load and soak of the embedded platform through its gateway, with locust (issue 14).

Method. One run starts ``modelcloud up`` in a data folder of its own (under
``bench/out/soak-<time>/``) on free ports, creates a user ``soak`` with a token of its own, a
project and, with that token, deploys a model that does nothing (the greeter: one ``text``
in, one out), so that the load measures the platform, not a model. Then locust
(``bench/locustfile.py``, headless, as a subprocess: its gevent stays out of this process)
sends, through the gateway only, a mix by weight of model calls (70 %: ``POST
/models/soak/greeter/v1/greet``), registry reads (20 %: the project's services and the
greeter's versions) and tracker writes (10 %: 20 metric points to the user's own run), with
``--users`` simulated users (more where one would be paced above 5 requests/s) sharing
``--rate`` requests per second (``--rate 0``: unpaced, each user sends again as soon as it
is answered). Every answer is checked; a failure is recorded with its status and body.

Every few seconds (``--sample-every``) the script reads, for the platform's process and
each of its descendants (the replica, its sandbox), the resident memory (``VmRSS`` in
``/proc/<pid>/status``), the open file descriptors (``/proc/<pid>/fd``) and the CPU time.
Memory is compared between the end of the warm-up (``--warmup``, 60 s) and the end of the
load; descriptors at the same two points, and before the load and a few seconds after it.

Finding the rate: ``--find-rate`` looks for the highest rate the machine sustains. After an
unjudged 10 s warm-up, steps of ``--step-duration`` seconds from ``--start-rate``, each 1.5
times the last, until a step fails, then ``--refine`` bisections. A step passes with no
failed request, an achieved rate (counted after its first 5 s) of at least 95 % of the
offered one, and a p99 of at most ``--max-p99-ms``. Without ``--rate`` the soak does that
search first and soaks at the highest rate that passed (what ``make bench`` does).

The verdict (exit status 1 when one fails or is unknown): no failed request (nor an
exception raised in locust's users, which its request counts leave out), no process's memory
grown by 10 % or more after the warm-up, no process holding more than 5 descriptors more at
the end than at the warm-up (the same clients are connected at both; unknown where a count
could not be read), the same processes in every sample as in the first (none replaced). CPU
is given in cores: CPU time over the time measured between the readings subtracted. The
script ends by printing the section for ``bench/RESULTS.md``; the JSON summary (with every
sample), locust's CSV files and the platform's log stay in the run's folder.

Everything shares this machine's cores: locust, the five services (one process) and the
replica. Locust rounds response times above 100 ms to 10 ms (above 1 s to 100 ms).
"""

import argparse
import contextlib
import csv
import importlib.metadata
import json
import math
import os
import platform as host_platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from local_platform import BIN, clean_env

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
PROJECT = "soak"
SERVICE = "greeter"
GREETER = """
import modelcloud
from modelcloud.data_types import text


@modelcloud.command("greet", inputs={"name": text()}, outputs={"message": text()})
def greet(model, inputs):
    return {"message": "hello, " + inputs["name"]}


if __name__ == "__main__":
    modelcloud.run()
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSS_GROWTH_LIMIT_PCT = 10.0
FD_LEAK_SLACK = 5  # descriptors: pools and client connections move by a few
SETTLE_S = 5.0
STEP_GROWTH = 1.5
AGGREGATED = "Aggregated"
# A user waits for each answer: paced at more than this, one slow answer would cost it rate
# it never catches up, and a step would fail on the client's pacing, not the platform.
MAX_USER_RATE = 5.0
WARM_UP_STEP_S = 10


def users_for(rate: float, minimum: int) -> int:
    """Enough users for ``rate`` requests/s with none paced above ``MAX_USER_RATE``."""
    return max(minimum, math.ceil(rate / MAX_USER_RATE)) if rate > 0 else minimum


# ---------------------------------------------------------------- the platform


def free_port_block(count: int = 5) -> int:
    """A port P with P..P+count-1 free: ``modelcloud up --port P`` takes five."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise SystemExit("no block of 5 free ports found")


@contextlib.contextmanager
def embedded(work: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``modelcloud up`` on its own data folder and ports, its output in ``platform.log``;
    the process and the gateway's URL while it runs."""
    port = free_port_block()
    log = (work / "platform.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "modelcloud"), "up", "--data-dir", str(work / "platform"), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    gateway = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(f"modelcloud up exited with {process.returncode}: see {log.name}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{gateway}/healthz").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("modelcloud up did not answer within 2 minutes")
            time.sleep(0.2)
        yield process, gateway
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def prepare(work: Path, env: dict[str, str], gateway: str) -> str:
    """A user ``soak`` and its token, its project, and the greeter deployed by it; the token."""
    admin = (work / "platform" / "admin.token").read_text().strip()
    with httpx.Client(base_url=gateway, timeout=30) as client:
        as_admin = {"Authorization": f"Bearer {admin}"}
        client.post("/v1/users", json={"name": "soak"}, headers=as_admin).raise_for_status()
        issued = client.post("/v1/users/soak/tokens", json={"name": "soak"}, headers=as_admin)
        issued.raise_for_status()
        token = str(issued.json()["token"])
        as_user = {"Authorization": f"Bearer {token}"}
        client.post("/v1/projects", json={"name": PROJECT}, headers=as_user).raise_for_status()
    folder = work / SERVICE
    folder.mkdir()
    (folder / "cloud_model.py").write_text(GREETER)
    (folder / "modelcloud.yml").write_text(f"service:\n  name: {SERVICE}\n")
    deployed = subprocess.run(
        [str(BIN / "modelcloud"), "deploy", str(folder), "--project", PROJECT, "--json"],
        env=env | {"MODELCLOUD_URL": gateway, "MODELCLOUD_TOKEN": token},
        capture_output=True,
        text=True,
        check=False,
    )
    if deployed.returncode != 0:
        raise SystemExit(f"the deploy failed:\n{deployed.stdout}\n{deployed.stderr}")
    answer = httpx.post(
        f"{gateway}/models/{PROJECT}/{SERVICE}/v1/greet",
        json={"name": "ada"},
        headers={"Authorization": f"Bearer {token}"},
    )
    if answer.json() != {"message": "hello, ada"}:
        raise SystemExit(f"the greeter answers {answer.status_code} {answer.text}")
    return token


# ---------------------------------------------------------------- process sampling


@dataclass(frozen=True)
class ProcessSample:
    label: str
    rss_kb: int
    fds: int | None  # None: /proc/<pid>/fd not readable (another uid, without root)
    cpu_s: float


@dataclass
class Sample:
    t: float  # seconds since the load started (negative: before)
    processes: dict[int, ProcessSample]


def _label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv if a]
    if not words:
        return "?"
    if words[0] == "bwrap":  # its argument list is the whole sandbox: say what it is
        return "bwrap (the replica's sandbox)"
    if words[1:3] == ["modelcloud", "up"]:
        return "modelcloud up (the five services)"
    return " ".join(words)[:60]


def _read_process(pid: int) -> ProcessSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone in between
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    rss_kb = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
    )
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return ProcessSample(_label(pid), rss_kb, fds, cpu_s)


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (the replica, its sandbox), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


def sample(root: int, t: float) -> Sample:
    read = {pid: _read_process(pid) for pid in descendants(root)}
    return Sample(t, {pid: s for pid, s in read.items() if s is not None})


class Sampler:
    """Samples the platform's processes every ``every`` seconds in a thread."""

    def __init__(self, root: int, every: float, started: float) -> None:
        self.root, self.every, self.started = root, every, started
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(sample(self.root, time.monotonic() - self.started))

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- locust


@dataclass(frozen=True)
class RequestStats:
    requests: int
    failures: int
    rate_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class LoadResult:
    by_type: dict[str, RequestStats]
    failures: list[dict[str, str]]
    # What a user's code raised (locust's _exceptions.csv): such a request is in no count
    # above, so the verdicts read these too.
    exceptions: list[dict[str, str]]
    load_generator_cpu_s: float
    wall_s: float  # how long locust ran, measured: what its CPU time is divided by
    history: list[tuple[float, int]] = field(default_factory=list)  # (unix time, total count)

    @property
    def total(self) -> RequestStats:
        return self.by_type[AGGREGATED]

    @property
    def exception_count(self) -> int:
        return sum(int(row.get("Count") or 1) for row in self.exceptions)

    @property
    def failed(self) -> int:
        """Failed requests and exceptions raised by the users' code, together."""
        return self.total.failures + self.exception_count

    def achieved_rate(self, skip_s: float) -> float:
        """Requests per second from ``skip_s`` after the first answer to the last."""
        if len(self.history) < 2:
            return self.total.rate_per_s
        start = self.history[0][0] + skip_s
        window = [(t, n) for t, n in self.history if t >= start] or self.history[-2:]
        (t0, n0), (t1, n1) = window[0], window[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else self.total.rate_per_s


def run_locust(
    gateway: str,
    token: str,
    *,
    users: int,
    spawn_rate: float,
    rate: float,
    seconds: int,
    prefix: Path,
) -> LoadResult:
    """locust, headless, for ``seconds``; its CSV files at ``prefix``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = os.environ | {
        "SOAK_TOKEN": token,
        "SOAK_PROJECT": PROJECT,
        "SOAK_SERVICE": SERVICE,
        "SOAK_USER_RATE": str(rate / users if rate > 0 else 0),
    }
    command = [
        str(BIN / "locust"),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        gateway,
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        f"{seconds}s",
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--logfile",
        f"{prefix}-locust.log",
    ]
    # locust exits 1 when a request failed: the CSV files say which, read below. Its own
    # summary tables go to a file beside them.
    started = time.monotonic()
    with Path(f"{prefix}-locust.out").open("wb") as out:
        subprocess.run(command, env=env, check=False, timeout=seconds + 120, stdout=out, stderr=out)
    wall_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return LoadResult(
        by_type=_read_stats(Path(f"{prefix}_stats.csv")),
        failures=_read_rows(Path(f"{prefix}_failures.csv")),
        exceptions=_read_rows(Path(f"{prefix}_exceptions.csv")),
        load_generator_cpu_s=cpu,
        wall_s=wall_s,
        history=_read_history(Path(f"{prefix}_stats_history.csv")),
    )


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as rows:
        return list(csv.DictReader(rows))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "N/A" where no request of the type was made
        return math.nan


def _read_stats(path: Path) -> dict[str, RequestStats]:
    rows = _read_rows(path)
    if not rows:
        raise SystemExit(f"locust wrote no statistics ({path}): see its log beside it")
    return {
        row["Name"]: RequestStats(
            requests=int(row["Request Count"]),
            failures=int(row["Failure Count"]),
            rate_per_s=_number(row["Requests/s"]),
            p50_ms=_number(row["50%"]),
            p95_ms=_number(row["95%"]),
            p99_ms=_number(row["99%"]),
            max_ms=_number(row["Max Response Time"]),
        )
        for row in rows
    }


def _read_history(path: Path) -> list[tuple[float, int]]:
    return [
        (float(row["Timestamp"]), int(row["Total Request Count"]))
        for row in _read_rows(path)
        if row["Name"] == AGGREGATED
    ]


# ---------------------------------------------------------------- soak

Json = dict[str, Any]


def _at(samples: list[Sample], t: float) -> Sample:
    """The first sample at or after ``t`` (else the last)."""
    return next((s for s in samples if s.t >= t), samples[-1])


def _rss_mb(s: Sample, pid: int) -> float | None:
    p = s.processes.get(pid)
    return round(p.rss_kb / 1024, 1) if p else None


def _fds(s: Sample, pid: int) -> int | None:
    p = s.processes.get(pid)
    return p.fds if p else None


def process_table(
    before: Sample, warm: Sample, end: Sample, after: Sample, samples: list[Sample]
) -> list[Json]:
    """One row per platform process: memory, descriptors and CPU across the load."""
    rows = []
    for pid in sorted(set(before.processes) | set(warm.processes) | set(end.processes)):
        seen = [s.processes[pid] for s in (before, warm, end, after) if pid in s.processes]
        warm_rss, end_rss = _rss_mb(warm, pid), _rss_mb(end, pid)
        growth = (
            round(100 * (end_rss - warm_rss) / warm_rss, 1)
            if warm_rss and end_rss is not None
            else None
        )
        cpu = (
            round(end.processes[pid].cpu_s - before.processes[pid].cpu_s, 1)
            if pid in end.processes and pid in before.processes
            else None
        )
        peak = max((s.processes[pid].rss_kb for s in samples if pid in s.processes), default=0)
        rows.append(
            {
                "pid": pid,
                "process": seen[0].label,
                "rss_mb": {
                    "before": _rss_mb(before, pid),
                    "warmup": warm_rss,
                    "end": end_rss,
                    "peak": round(peak / 1024, 1),
                },
                "rss_growth_pct": growth,
                "fds": {
                    "before": _fds(before, pid),
                    "warmup": _fds(warm, pid),
                    "end": _fds(end, pid),
                    "after": _fds(after, pid),
                },
                "cpu_s": cpu,
            }
        )
    return rows


def _fd_growth(row: Json) -> int | None:
    """Descriptors opened between the warm-up and the end, under the same load: pools and
    client connections are open at both, so what is left is what the load leaked. None
    where either count is missing (``/proc/<pid>/fd`` unreadable, or the process absent)."""
    warm, end = row["fds"]["warmup"], row["fds"]["end"]
    return int(end - warm) if warm is not None and end is not None else None


def no_descriptor_leak(processes: list[Json]) -> bool | None:
    """True when no process grew by more than the slack; None (unknown, which fails the
    run) when a process's descriptors could not be counted: no count is not no leak."""
    growth = [_fd_growth(p) for p in processes]
    if any(g is not None and g > FD_LEAK_SLACK for g in growth):
        return False
    return None if None in growth else True


def process_changes(samples: list[Sample]) -> list[Json]:
    """Every sample whose set of processes differs from the first one's: what went, what
    came. A replica restarted and back between two checks of the ends still shows here."""
    first = set(samples[0].processes)
    return [
        {
            "t": round(s.t, 1),
            "gone": sorted(first - set(s.processes)),
            "new": sorted(set(s.processes) - first),
        }
        for s in samples[1:]
        if set(s.processes) != first
    ]


def platform_log(path: Path) -> Json:
    """How many lines of each level the platform logged, and its distinct error events."""
    levels: dict[str, int] = {}
    errors: dict[str, int] = {}
    with path.open(errors="replace") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            level = str(event.get("level", "?"))
            levels[level] = levels.get(level, 0) + 1
            if level in ("error", "critical"):
                text = str(event.get("event", ""))[:200]
                errors[text] = errors.get(text, 0) + 1
    return {"lines_by_level": levels, "error_events": errors}


def machine() -> Json:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        host_platform.machine(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024**2, 1),
        "python": host_platform.python_version(),
        # From its metadata: importing locust would monkey-patch this process (gevent).
        "locust": importlib.metadata.version("locust"),
        "kernel": host_platform.release(),
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def soak(
    work: Path, process: subprocess.Popen[bytes], gateway: str, token: str, args: argparse.Namespace
) -> Json:
    """The load for ``--duration`` seconds at ``--rate``, the platform's processes sampled."""
    warmup = args.warmup if args.duration > 2 * args.warmup else args.duration / 3
    load_start = time.monotonic()
    before = sample(process.pid, 0.0)
    with Sampler(process.pid, args.sample_every, load_start) as sampler:
        result = run_locust(
            gateway,
            token,
            users=args.users,  # main() raised it to users_for(rate) already
            spawn_rate=args.spawn_rate,
            rate=args.rate,
            seconds=args.duration,
            prefix=work / "soak",
        )
        end = sample(process.pid, time.monotonic() - load_start)
    time.sleep(SETTLE_S)  # the clients are gone: what stays open now is the platform's own
    after = sample(process.pid, time.monotonic() - load_start)
    samples = sampler.samples
    warm = _at(samples or [end], warmup)
    processes = process_table(before, warm, end, after, samples)
    # The CPU time of the platform's process and its descendants (the replica, its sandbox)
    # between the two samples subtracted, over the time measured between those samples.
    platform_cpu = sum(
        end.processes[pid].cpu_s - before.processes[pid].cpu_s
        for pid in end.processes
        if pid in before.processes
    )
    changes = process_changes([before, *samples, end, after])
    return {
        "requests": {
            "total": result.total.requests,
            "failures": result.total.failures,
            "rate_per_s": round(result.total.rate_per_s, 1),
            "by_type": {name: asdict(stats) for name, stats in result.by_type.items()},
            "failed": result.failures,
            "exceptions": result.exception_count,
            "raised": result.exceptions,
        },
        "warmup_s": round(warm.t, 1),
        "end_s": round(end.t, 1),
        "processes": processes,
        "cpu_cores_used": {
            "platform_and_replica": round(platform_cpu / max(end.t - before.t, 1e-9), 2),
            "load_generator": round(result.load_generator_cpu_s / max(result.wall_s, 1e-9), 2),
        },
        "process_changes": changes,
        "verdict": {
            "no_failed_request": result.failed == 0,
            "memory_flat_after_warmup": all(
                (p["rss_growth_pct"] or 0) < RSS_GROWTH_LIMIT_PCT for p in processes
            ),
            "no_descriptor_leak": no_descriptor_leak(processes),
            "no_process_replaced": not changes,
        },
        "series": [
            {
                "t": round(s.t, 1),
                "rss_mb": {pid: _rss_mb(s, pid) for pid in s.processes},
                "fds": {pid: _fds(s, pid) for pid in s.processes},
            }
            for s in samples
        ],
    }


# ---------------------------------------------------------------- rate search


def find_rate(
    work: Path, gateway: str, token: str, args: argparse.Namespace
) -> tuple[float, list[Json]]:
    """The highest offered rate that passed a step, and every step."""
    steps: list[Json] = []
    # Not judged: the first requests pay for the platform's cold caches and pools.
    run_locust(
        gateway,
        token,
        users=args.users,
        spawn_rate=args.users,
        rate=args.start_rate / 2,
        seconds=WARM_UP_STEP_S,
        prefix=work / "rate-0-warm-up",
    )

    def step(rate: float) -> bool:
        users = users_for(rate, args.users)
        result = run_locust(
            gateway,
            token,
            users=users,
            spawn_rate=users,  # all at once: the step's rate from its first second
            rate=rate,
            seconds=args.step_duration,
            prefix=work / f"rate-{len(steps) + 1}-{rate:.0f}",
        )
        achieved = result.achieved_rate(skip_s=5)
        passed = (
            result.failed == 0
            and achieved >= 0.95 * rate
            and result.total.p99_ms <= args.max_p99_ms
        )
        steps.append(
            {
                "offered_per_s": round(rate, 1),
                "users": users,
                "achieved_per_s": round(achieved, 1),
                "requests": result.total.requests,
                "failures": result.failed,
                "p50_ms": result.total.p50_ms,
                "p99_ms": result.total.p99_ms,
                "passed": passed,
                "failed": result.failures,
            }
        )
        print(
            f"  offered {rate:7.1f}/s  achieved {achieved:7.1f}/s  failures "
            f"{result.failed}  p99 {result.total.p99_ms:g} ms  "
            f"{'pass' if passed else 'FAIL'}",
            flush=True,
        )
        return passed

    good, bad = 0.0, math.inf
    rate = args.start_rate
    while rate <= args.max_rate:
        if not step(rate):
            bad = rate
            break
        good = rate
        rate *= STEP_GROWTH
    for _ in range(args.refine if math.isfinite(bad) and good > 0 else 0):
        middle = (good + bad) / 2
        if step(middle):
            good = middle
        else:
            bad = middle
    return good, steps


# ---------------------------------------------------------------- report


def _verdict_word(ok: bool | None) -> str:
    return "yes" if ok else "**unknown** (descriptors not readable)" if ok is None else "**no**"


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def markdown(summary: Json) -> str:
    """The section for bench/RESULTS.md."""
    settings, host = summary["settings"], summary["machine"]
    soaked = summary.get("soak")
    lines = [
        "## Load and soak (issue 14)",
        "",
        f"**Command:** `{summary['command']}`.",
        f"**Machine:** nproc {host['nproc']} ({host['cpu']}), {host['memory_gib']} GiB, "
        f"Python {host['python']}, locust {host['locust']}; load average "
        f"{summary['loadavg_start']} at the start, {summary['loadavg_end']} at the end.",
        f"**Date:** {summary['date']} (started).",
        "",
        "**Method.** `bench/soak.py` starts `modelcloud up` in a fresh data folder on free "
        "ports, creates a user and its project, and with that user's token deploys a model "
        "that does nothing (one `text` in, one out), so the load measures the platform. "
        "Locust (`bench/locustfile.py`, headless, FastHttpUser) sends through the gateway "
        "model calls (70 %), registry reads (20 %: the project's services, the model's "
        "versions) and tracker writes (10 %: 20 points each to the user's own run), every "
        "answer checked, "
        + (f"from {settings['users']} users at " if soaked else "")
        + f"{settings['rate_label']}. "
        "Locust, the platform (five services in one process) and the replica share the cores.",
    ]
    if soaked:
        lines[-1] += (
            f" Load: {settings['duration_s']} s. Every {settings['sample_every_s']:g} s the "
            "script reads each platform process's RSS, open descriptors and CPU time from "
            "`/proc` (the platform, the replica and its sandbox). Memory: end of the load "
            f"against the end of the warm-up ({soaked['warmup_s']:g} s in); descriptors: "
            "the same two points (the clients connected at both), and before and "
            f"{SETTLE_S:g} s after the load for reference."
        )
    search = summary.get("rate_search")
    if search:
        lines += [
            "",
            f"Rate search (`--find-rate`; steps of {settings['step_duration_s']} s, each "
            "passing with no failed request, an achieved rate of at least 95 % of the offered "
            f"one and a p99 of at most {settings['max_p99_ms']:g} ms):",
            "",
            "| offered req/s | users | achieved req/s | requests | failures | p50 ms | p99 ms "
            "| passed |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {s['offered_per_s']} | {s['users']} | {s['achieved_per_s']} | {s['requests']} | "
            f"{s['failures']} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | "
            f"{'yes' if s['passed'] else 'no'} |"
            for s in search
        ]
        lines += ["", f"Highest rate sustained: **{summary['found_rate']:.1f} requests/s**."]
    if soaked:
        requests = soaked["requests"]
        lines += [
            "",
            "| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in sorted(requests["by_type"].items(), key=lambda kv: kv[0] == AGGREGATED):
            lines.append(
                f"| {'**all**' if name == AGGREGATED else name} | {s['requests']} | "
                f"{s['failures']} | {s['rate_per_s']:.1f} | {_ms(s['p50_ms'])} | "
                f"{_ms(s['p95_ms'])} | {_ms(s['p99_ms'])} | {_ms(s['max_ms'])} |"
            )
        lines += [
            "",
            "| process | RSS MiB warm-up | RSS MiB end | growth % | peak MiB | fds before "
            "| fds warm-up | fds end | fds after | CPU s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in soaked["processes"]:
            rss, fds = p["rss_mb"], p["fds"]
            lines.append(
                f"| {p['process']} | {rss['warmup']} | {rss['end']} | {p['rss_growth_pct']} | "
                f"{rss['peak']} | {fds['before']} | {fds['warmup']} | {fds['end']} | "
                f"{fds['after']} | {p['cpu_s']} |"
            )
        cores, verdict, log = soaked["cpu_cores_used"], soaked["verdict"], summary["platform_log"]
        lines += [
            "",
            f"Cores used on average: platform and replica {cores['platform_and_replica']}, "
            f"load generator {cores['load_generator']}. Platform log lines by level: "
            + ", ".join(f"{k} {v}" for k, v in sorted(log["lines_by_level"].items()))
            + ".",
            "Verdict: "
            + "; ".join(
                f"{name.replace('_', ' ')}: {_verdict_word(ok)}" for name, ok in verdict.items()
            )
            + ".",
        ]
        if requests["failed"]:
            lines += ["", "Failed requests:", ""]
            lines += [
                f"- {f['Method']} {f['Name']}: {f['Occurrences']} x `{f['Error']}`"
                for f in requests["failed"]
            ]
        if requests["exceptions"]:
            lines += ["", "Exceptions raised by the users' code (requests in no count above):", ""]
            lines += [f"- {e['Count']} x `{e['Message'][:200]}`" for e in requests["raised"]]
        if soaked["process_changes"]:
            lines += ["", "Processes that went or came during the load (pids):", ""]
            lines += [
                f"- at {c['t']:g} s: gone {c['gone'] or '-'}, new {c['new'] or '-'}"
                for c in soaked["process_changes"]
            ]
        if log["error_events"]:
            lines += ["", "Errors the platform logged:", ""]
            lines += [f"- {n} x `{text}`" for text, n in log["error_events"].items()]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=600, help="seconds of soak load")
    parser.add_argument(
        "--users",
        type=int,
        default=24,
        help=f"simulated users (connections); more where the rate asks more than "
        f"{MAX_USER_RATE:g}/s of one",
    )
    parser.add_argument("--spawn-rate", type=float, default=8.0, help="users started per second")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests/s offered in all (0: unpaced); without it, found by a search first",
    )
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--find-rate", action="store_true", help="only search for the highest sustained rate"
    )
    parser.add_argument("--start-rate", type=float, default=50.0, help="the search's first step")
    parser.add_argument("--max-rate", type=float, default=5000.0, help="the search stops there")
    parser.add_argument("--step-duration", type=int, default=30, help="seconds per search step")
    parser.add_argument("--refine", type=int, default=2, help="bisections after the first fail")
    parser.add_argument("--max-p99-ms", type=float, default=500.0, help="a search step's bound")
    parser.add_argument("--keep", action="store_true", help="keep the platform's data folder")
    args = parser.parse_args()
    if args.users < 1 or args.duration < 1 or args.step_duration < 1:
        parser.error("--users, --duration and --step-duration must be at least 1")
    return args


def main() -> None:
    args = arguments()
    work = HERE / "out" / time.strftime("soak-%Y%m%d-%H%M%S", time.gmtime())
    work.mkdir(parents=True)
    env = clean_env(work)
    summary: Json = {
        "command": shlex.join([".venv/bin/python", "bench/soak.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "loadavg_start": loadavg(),
    }
    try:
        with embedded(work, env) as (process, gateway):
            token = prepare(work, env, gateway)
            if args.find_rate or args.rate is None:
                print(f"searching for the highest sustained rate ({args.step_duration} s steps)")
                found, steps = find_rate(work, gateway, token, args)
                summary["rate_search"], summary["found_rate"] = steps, found
                print(f"highest rate sustained: {found:.1f} requests/s", flush=True)
                if found == 0:
                    raise SystemExit(f"no step passed, not even {args.start_rate:g}/s")
                args.rate = round(found, 1)
            if not args.find_rate:
                args.users = users_for(args.rate, args.users)
                print(f"soak: {args.duration} s, {args.users} users, rate {args.rate or 'unpaced'}")
                summary["soak"] = soak(work, process, gateway, token, args)
    finally:
        summary["loadavg_end"] = loadavg()
        if not args.keep:  # the replica's environment: hundreds of MB
            shutil.rmtree(work / "platform", ignore_errors=True)
    summary["platform_log"] = platform_log(work / "platform.log")
    summary["settings"] = {
        "duration_s": args.duration,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "rate_per_s": args.rate,
        "rate_label": (
            "the rates below"
            if args.find_rate
            else f"{args.rate:g} requests/s offered in all"
            if args.rate
            else "as fast as answered"
        ),
        "sample_every_s": args.sample_every,
        "step_duration_s": args.step_duration,
        "max_p99_ms": args.max_p99_ms,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    shown = dict(summary)
    if "soak" in summary:  # the samples stay in the file
        shown["soak"] = {k: v for k, v in summary["soak"].items() if k != "series"}
    print(json.dumps(shown, indent=2))
    print(f"\nsummary.json (with the samples), locust's CSV files and platform.log: {work}")
    print("\n---- for bench/RESULTS.md ----\n")
    print(markdown(summary))
    if args.find_rate:
        print(f"\nthe soak at that rate: .venv/bin/python bench/soak.py --rate {args.rate:g}")
    # An unknown verdict (None) fails the run as a failed one does: nothing was shown.
    if "soak" in summary and not all(summary["soak"]["verdict"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
