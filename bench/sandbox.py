"""What the venv runtime's sandbox costs (issue 13): the same tiny model published and
called with ``BUILDER_SANDBOX=bwrap`` and ``none``, side by side in one run.

Publish: a build whose environment is reused (the steps' cost is pip's, not the sandbox's:
only the code is copied, and given to the project's user), then a replica started until its
``/healthz`` answers. Rounds alternate the two modes so that a drift of the machine falls on
both. Calls: ``--calls`` sequential ``POST /greet`` to one replica of each mode, over one
keep-alive connection, p50 and p99.

    .venv/bin/python bench/sandbox.py [--rounds 5] [--calls 2000]

Run as root (the sandbox needs it). The first build of the environment (a minute or so,
pip's) happens once before timing and is not counted.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import httpx

from modelcloud_proto.specs import BuildSpec, Device
from services.builder.backends.base import BuildJob, ReplicaSpec
from services.builder.backends.venv import ProcessRuntime, VenvBuilder
from services.builder.settings import BuilderSettings

MODES = ("bwrap", "none")
GREETER = """
import modelcloud
from modelcloud.data_types import text


@modelcloud.setup
def setup():
    return {"greeting": open("greeting.txt").read().strip()}


@modelcloud.command("greet", inputs={"name": text()}, outputs={"message": text()})
def greet(model, inputs):
    return {"message": f"{model['greeting']}, {inputs['name']}"}


if __name__ == "__main__":
    modelcloud.run()
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Side:
    """One mode: its builder and runtime, sharing the cache (so the environment too)."""

    def __init__(self, mode: str, data: Path, cache: Path) -> None:
        self.settings = BuilderSettings(data_dir=data / mode, cache_dir=cache, sandbox=mode)
        self.builder = VenvBuilder(self.settings, data / mode)
        self.runtime = ProcessRuntime(f"bench-sandbox-{mode}", self.settings)
        self.handles: list[str] = []

    async def publish(self, source: Path, http: httpx.AsyncClient) -> tuple[float, str]:
        """Seconds from build start to a healthy replica, and the replica's address."""
        version_id = uuid4()
        started = time.perf_counter()
        artifact = await self.builder.build(
            BuildJob(uuid4(), version_id, BuildSpec(), Device.CPU, source, project="bench"),
            lambda line: None,
        )
        port = free_port()
        replica = ReplicaSpec(
            replica_id=uuid4(),
            version_id=version_id,
            artifact=artifact,
            host="127.0.0.1",
            port=port,
            concurrency=1,
            gpu=False,
            log_path=self.settings.data_dir / "logs" / f"{version_id}.log",
            project="bench",
        )
        handle = await self.runtime.start(replica)
        self.handles.append(handle)
        address = f"127.0.0.1:{port}"
        while True:
            try:
                if (await http.get(f"http://{address}/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if not self.runtime.alive(handle):
                raise RuntimeError(f"the replica exited: see {replica.log_path}")
            await asyncio.sleep(0.02)
        return time.perf_counter() - started, address

    async def stop_all(self) -> None:
        for handle in self.handles:
            await self.runtime.stop(handle)
        self.handles.clear()


async def calls(address: str, count: int) -> list[float]:
    took = []
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        for _ in range(50):  # warm the connection and the model's first call
            await client.post("/greet", json={"name": "warm"})
        for _ in range(count):
            started = time.perf_counter()
            answer = await client.post("/greet", json={"name": "ada"})
            took.append(time.perf_counter() - started)
            answer.raise_for_status()
    return took


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main(rounds: int, count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as folder:
        root = Path(folder)
        source = root / "bundle"
        source.mkdir()
        (source / "cloud_model.py").write_text(GREETER)
        (source / "greeting.txt").write_text("hello\n")
        sides = {mode: Side(mode, root, root / "cache") for mode in MODES}
        publish: dict[str, list[float]] = {mode: [] for mode in MODES}
        async with httpx.AsyncClient(timeout=5) as http:
            try:
                for mode in MODES:  # builds the environment once (not timed), checks both
                    await sides[mode].publish(source, http)
                    await sides[mode].stop_all()
                for index in range(rounds):
                    order = MODES if index % 2 == 0 else MODES[::-1]
                    for mode in order:
                        seconds, _ = await sides[mode].publish(source, http)
                        publish[mode].append(seconds)
                        await sides[mode].stop_all()
                latency = {}
                for mode in MODES:
                    _, address = await sides[mode].publish(source, http)
                    latency[mode] = await calls(address, count)
                    await sides[mode].stop_all()
            finally:
                for side in sides.values():
                    await side.stop_all()
    print(
        f"publish (reused environment, build start -> healthy), {rounds} rounds; "
        f"{count} sequential calls per mode"
    )
    print(
        f"{'mode':<6} {'publish median s':>17} {'min':>7} {'max':>7} "
        f"{'call p50 ms':>12} {'p99 ms':>8}"
    )
    for mode in MODES:
        times = publish[mode]
        print(
            f"{mode:<6} {statistics.median(times):>17.3f} {min(times):>7.3f} {max(times):>7.3f} "
            f"{percentile(latency[mode], 50) * 1000:>12.2f} "
            f"{percentile(latency[mode], 99) * 1000:>8.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.calls))
