"""Served model vs the same model called in-process (issue 2's benchmark).

Method. The example ImageNet model (``examples/imagenet-classifier``, EfficientNet-Lite0)
classifies one real photo over and over: scikit-image's Chelsea (451x300) encoded once as
JPEG (quality 90). Both sides start from those JPEG bytes.

* in-process: this script imports ``cloud_model.py`` from its path, runs ``setup()`` once,
  and each call decodes the JPEG with PIL and calls ``classify(model, {'photo': img})``:
  what a user does without a server. Concurrency c = c threads of a ThreadPoolExecutor
  calling at once.
* served: ``python examples/imagenet-classifier/cloud_model.py`` in a subprocess on a free
  ``MODELCLOUD_PORT``, once exactly as written (the SDK default of one prediction at a time)
  and once with ``MODELCLOUD_CONCURRENCY`` set to what the example's ``modelcloud.yml``
  declares (what a deployment gets). The load generator is asyncio: c workers on one pooled
  ``httpx.AsyncClient`` each loop ``POST /classify`` with ``{"photo": "<base64>"}``, the
  base64 and JSON encoded per request as a real client would. The extra cost measured is
  therefore base64 + JSON + HTTP + the server's thread hand-offs.

Every case runs for a fixed wall time, split into rounds that alternate the cases (ABC, CBA,
...) so drift on a shared machine hits them alike; each round starts with a warm-up of at
least 10 requests at the case's concurrency. Every response (warm-up included) must be a
200 with a cat label, else the script exits 1.

The load generator runs on the same cores as the server (2 on the CI machine) and takes CPU
from it, so served figures are a floor. To show how much, the table gives the CPU time per
request of the model side (the server process; this process for in-process cases) and of
the load generator (this process during served cases). By default nothing is pinned, as in
a deployment. ``--pin`` puts the model side, in-process and served alike, on every CPU but
the last and the load generator on the last: the load generator then steals nothing, but
on 2 cores the model gets one core, so it answers a different question (overhead per core,
not throughput of the machine).
"""

import argparse
import asyncio
import base64
import importlib.util
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import torch
import yaml
from PIL import Image
from skimage import data as photos

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "imagenet-classifier"
CAT_LABELS = frozenset(
    {"tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese", "Egyptian cat"}
)
CONCURRENCIES = (1, 8)
WARMUP = 10
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    """One case's measurements, summed over its rounds."""

    case: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    failures: int = 0
    model_cpu_s: float = 0.0
    client_cpu_s: float | None = None

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def add(self, other: "Tally") -> None:
        self.latencies_ms += other.latencies_ms
        self.seconds += other.seconds
        self.failures += other.failures
        self.model_cpu_s += other.model_cpu_s
        if other.client_cpu_s is not None:
            self.client_cpu_s = (self.client_cpu_s or 0.0) + other.client_cpu_s


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path


# ----------------------------------------------------------------------------- inputs


def jpeg_photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photos.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def load_example() -> ModuleType:
    """``cloud_model.py`` imported from its path (it finds its labels by ``__file__``)."""
    path = EXAMPLE / "cloud_model.py"
    spec = importlib.util.spec_from_file_location("bench_cloud_model", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declared_concurrency() -> int:
    spec = yaml.safe_load((EXAMPLE / "modelcloud.yml").read_text(encoding="utf-8"))
    return int(spec.get("concurrency") or 1)


# ----------------------------------------------------------------------------- in-process


def _call_loop(call: Callable[[], str], until: Callable[[int], bool]) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    while not until(len(latencies)):
        started = time.perf_counter()
        try:
            ok = call() in CAT_LABELS
        except Exception:  # a failure to count, not to stop on
            ok = False
        latencies.append((time.perf_counter() - started) * 1000)
        failures += not ok
    return latencies, failures


def run_in_process(call: Callable[[], str], concurrency: int, seconds: float) -> Tally:
    tally = Tally("in-process", concurrency)
    per_worker = -(-WARMUP // concurrency)
    with ThreadPoolExecutor(concurrency) as pool:
        warm = [
            pool.submit(_call_loop, call, lambda n: n >= per_worker) for _ in range(concurrency)
        ]
        tally.failures += sum(f.result()[1] for f in warm)
        cpu, began = time.process_time(), time.perf_counter()
        deadline = began + seconds
        timed = [
            pool.submit(_call_loop, call, lambda _: time.perf_counter() >= deadline)
            for _ in range(concurrency)
        ]
        for future in timed:
            latencies, failures = future.result()
            tally.latencies_ms += latencies
            tally.failures += failures
    tally.seconds = time.perf_counter() - began
    tally.model_cpu_s = time.process_time() - cpu
    return tally


# ----------------------------------------------------------------------------- served


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(name: str, concurrency: int | None, logs: Path) -> Server:
    """``python cloud_model.py`` on a free port; ``concurrency`` None keeps the SDK default."""
    port = free_port()
    env = {**os.environ, "MODELCLOUD_PORT": str(port), "MODELCLOUD_HOST": "127.0.0.1"}
    env.pop("MODELCLOUD_CONCURRENCY", None)
    if concurrency is not None:
        env["MODELCLOUD_CONCURRENCY"] = str(concurrency)
    log = logs / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE.relative_to(ROOT) / "cloud_model.py")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(name, process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited:\n{server.log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{server.name} was not ready after {timeout:.0f} s")


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process (``sched_setaffinity`` alone moves one thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


@contextmanager
def pinned(server: Server | None, enabled: bool) -> Iterator[None]:
    """With ``enabled``, the model side (the server, or this process in-process) runs on every
    CPU but the last, and the load generator (this process, served) on the last one."""
    if not enabled:
        yield
        return
    every = set(os.sched_getaffinity(0))
    last = {max(every)}
    model_cpus = every - last or last
    if server is None:
        set_affinity(os.getpid(), model_cpus)
    else:
        set_affinity(server.process.pid, model_cpus)
        set_affinity(os.getpid(), last)
    try:
        yield
    finally:
        set_affinity(os.getpid(), every)
        if server is not None:
            set_affinity(server.process.pid, every)


async def _post_loop(
    client: httpx.AsyncClient, url: str, photo: bytes, until: Callable[[int], bool]
) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    while not until(len(latencies)):
        started = time.perf_counter()
        try:
            payload = {"photo": base64.b64encode(photo).decode("ascii")}
            response = await client.post(f"{url}/classify", json=payload)
            ok = response.status_code == 200 and response.json().get("label") in CAT_LABELS
        except (httpx.HTTPError, ValueError):
            ok = False
        latencies.append((time.perf_counter() - started) * 1000)
        failures += not ok
    return latencies, failures


async def run_served(
    client: httpx.AsyncClient, server: Server, photo: bytes, concurrency: int, seconds: float
) -> Tally:
    tally = Tally(server.name, concurrency)
    per_worker = -(-WARMUP // concurrency)
    warm = await asyncio.gather(
        *(
            _post_loop(client, server.url, photo, lambda n: n >= per_worker)
            for _ in range(concurrency)
        )
    )
    tally.failures += sum(failures for _, failures in warm)
    server_cpu, client_cpu = cpu_seconds(server.process.pid), time.process_time()
    began = time.perf_counter()
    deadline = began + seconds
    timed = await asyncio.gather(
        *(
            _post_loop(client, server.url, photo, lambda _: time.perf_counter() >= deadline)
            for _ in range(concurrency)
        )
    )
    tally.seconds = time.perf_counter() - began
    tally.model_cpu_s = cpu_seconds(server.process.pid) - server_cpu
    tally.client_cpu_s = time.process_time() - client_cpu
    for latencies, failures in timed:
        tally.latencies_ms += latencies
        tally.failures += failures
    return tally


# ----------------------------------------------------------------------------- the run


async def measure(
    servers: list[Server],
    classify: Callable[[], str],
    photo: bytes,
    rounds: int,
    seconds: float,
    pin: bool,
) -> list[Tally]:
    """Every case at every concurrency, in rounds that alternate the order of the cases."""
    tallies: dict[tuple[str, int], Tally] = {}
    per_round = seconds / rounds
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        for concurrency in CONCURRENCIES:
            cases: list[Server | None] = [None, *servers]
            for round_ in range(rounds):
                for server in cases if round_ % 2 == 0 else cases[::-1]:
                    with pinned(server, pin):
                        if server is None:
                            tally = await asyncio.to_thread(
                                run_in_process, classify, concurrency, per_round
                            )
                        else:
                            tally = await run_served(client, server, photo, concurrency, per_round)
                    key = (tally.case, concurrency)
                    tallies.setdefault(key, Tally(*key)).add(tally)
    return list(tallies.values())


def machine() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return [
        f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"machine: nproc {len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()}), {model}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torch.get_num_threads() = {torch.get_num_threads()}",
    ]


def table(tallies: list[Tally]) -> list[str]:
    rows = [
        "| case | concurrency | requests | req/s | p50 ms | p99 ms "
        "| model-side CPU ms/req | load-gen CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in tallies:
        p50, p99 = np.percentile(t.latencies_ms, [50, 99]) if t.requests else (0.0, 0.0)
        per_req = 1000 / t.requests if t.requests else 0.0
        client = "-" if t.client_cpu_s is None else f"{t.client_cpu_s * per_req:.1f}"
        rows.append(
            f"| {t.case} | {t.concurrency} | {t.requests} | {t.throughput:.1f} | {p50:.1f} "
            f"| {p99:.1f} | {t.model_cpu_s * per_req:.1f} | {client} |"
        )
    return rows


def ratios(tallies: list[Tally]) -> list[str]:
    lines = []
    for concurrency in CONCURRENCIES:
        same = [t for t in tallies if t.concurrency == concurrency]
        base = next(t for t in same if t.case == "in-process")
        for t in same:
            if t is not base and base.throughput:
                lines.append(
                    f"- concurrency {concurrency}: {t.case} / in-process throughput = "
                    f"**{t.throughput / base.throughput:.2f}**"
                )
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per case")
    parser.add_argument("--rounds", type=int, default=3, help="rounds each case is split in")
    parser.add_argument("--quick", action="store_true", help="2 s per case in 1 round (smoke)")
    parser.add_argument("--pin", action="store_true", help="pin model side / load generator apart")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    return args


def main() -> int:
    args = parse_args()
    photo = jpeg_photo()
    declared = declared_concurrency()
    with tempfile.TemporaryDirectory(prefix="bench-model-server-") as logs:
        servers = [
            start_server("served, SDK default (1 at a time)", None, Path(logs)),
            start_server(
                f"served, MODELCLOUD_CONCURRENCY={declared} (modelcloud.yml)",
                declared,
                Path(logs),
            ),
        ]
        try:
            example = load_example()
            model = example.setup()

            def classify() -> str:
                img = Image.open(io.BytesIO(photo))
                label: str = example.classify(model, {"photo": img})["label"]
                return label

            for server in servers:
                wait_ready(server)
            tallies = asyncio.run(
                measure(servers, classify, photo, args.rounds, args.seconds, args.pin)
            )
        finally:
            for server in servers:
                stop(server)

    print("\n".join(machine()))
    print(
        f"photo: skimage chelsea, JPEG q90, {len(photo)} bytes; {args.seconds:g} s per case "
        f"in {args.rounds} round(s), warm-up {WARMUP} requests per round; "
        f"pinned: {'yes' if args.pin else 'no'}\n"
    )
    print("\n".join(table(tallies)))
    print()
    print("\n".join(ratios(tallies)))
    failures = sum(t.failures for t in tallies)
    if failures:
        print(f"\nFAILED: {failures} requests failed or gave a non-cat label", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
