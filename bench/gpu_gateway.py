"""On the GPU machine: the gateway sends a ``gpu`` service's calls to the replica in the gpu
pool and a ``cpu`` service's calls to the one in the cpu pool (issue 6).

Run like ``bench/gpu_replica.py`` (a Python whose environment has torch with CUDA and the
platform's dependencies stands in for the built artifact). The builder's supervisor starts
two replicas of the example, one with the GPU and one without; the gateway (with a real
registry behind it for tokens) is told, as ``registry.version.online`` would tell it, that
each service runs on both. Then each replica in turn is frozen (SIGSTOP): calls of the
service whose pool it is stall into the service's 2 s timeout (504), calls of the other
service still answer, so each call went to its own pool. ``nvidia-smi`` names the gpu
replica's process.
"""

import asyncio
import base64
import io
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import httpx

from modelcloud_proto.events import Envelope, Replica, VersionOnline
from modelcloud_proto.specs import Device
from services.builder.backends.venv import ProcessRuntime
from services.builder.deployments.supervisor import Supervisor
from services.builder.settings import BuilderSettings
from services.common.database import create_engine, session_factory
from services.common.events.local import LocalBus
from services.gateway import tables
from services.gateway.main import create_app as gateway_app
from services.gateway.settings import GatewaySettings
from services.registry.admin import create_admin_user
from services.registry.main import create_app as registry_app
from services.registry.settings import RegistrySettings


def photo_jpeg() -> bytes:
    """scikit-image's Chelsea as JPEG (or that file, where scikit-image is not installed)."""
    carried = Path(os.environ.get("CHELSEA_JPEG", "bench/out/gpu-gw/chelsea.jpg"))
    if carried.is_file():
        return carried.read_bytes()
    from PIL import Image
    from skimage import data

    photo = io.BytesIO()
    Image.fromarray(data.chelsea()).save(photo, format="JPEG", quality=90)
    return photo.getvalue()


def gpu_processes() -> str:
    return subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


async def main() -> None:
    from sqlmodel import SQLModel

    from bench.gpu_replica import deploy

    root = Path(tempfile.mkdtemp(prefix="mc-gpu-gateway-"))
    engine = create_engine(f"sqlite+aiosqlite:///{root / 'builder.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(SQLModel.metadata.create_all)
    sessions = session_factory(engine)
    supervisor = Supervisor(
        sessions=sessions,
        runtime=ProcessRuntime("gpu-gateway"),
        settings=BuilderSettings(
            data_dir=root, gpus=1, health_timeout_s=300, stop_replicas_on_exit=True
        ),
        relay=None,
        logs=root / "logs",
    )
    registry_settings = RegistrySettings(data_dir=root / "registry")
    token = await create_admin_user(registry_settings, "admin")
    bus = LocalBus(root / "events.db")
    await bus.start()
    registry = registry_app(registry_settings, bus=bus)
    reach = httpx.ASGITransport(app=registry)
    gateway = gateway_app(
        GatewaySettings(data_dir=root / "gateway", allowed_hosts=["gateway"]),
        bus=bus,
        transports={"registry": reach},
    )
    body = {"photo": base64.b64encode(photo_jpeg()).decode()}
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            registry.router.lifespan_context(registry),
            gateway.router.lifespan_context(gateway),
            httpx.AsyncClient(transport=reach, base_url="http://registry", headers=headers) as reg,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway),
                base_url="http://gateway",
                headers=headers,
                timeout=60,
            ) as client,
        ):
            assert (await reg.post("/v1/projects", json={"name": "gpu"})).status_code == 201
            replicas = {}
            for device in (Device.GPU, Device.CPU):
                ready = await deploy(supervisor, sessions, device)
                (replica,) = ready["event"]["replicas"]  # type: ignore[index]
                replicas[device] = (Replica.model_validate(replica), int(ready["pid"]))  # type: ignore[call-overload]
            both = [replicas[Device.GPU][0], replicas[Device.CPU][0]]
            for api_version, device in enumerate((Device.GPU, Device.CPU), 1):
                online = VersionOnline(
                    project="gpu",
                    service=f"on-{device.value}",
                    version_id=uuid4(),
                    version="1.0",
                    api_version=api_version,
                    replicas=both,
                    device=device,
                    timeout_s=2,
                )
                tables.apply(gateway.state.routes, Envelope.of(online, producer="registry"))

            async def call(service: str) -> tuple[int, str]:
                answer = await client.post(f"/models/gpu/on-{service}/classify", json=body)
                label = answer.json().get("label", answer.json().get("detail", ""))
                return answer.status_code, str(label)

            on_gpu = (await asyncio.to_thread(gpu_processes)).split()
            print(f"nvidia-smi compute pids: {on_gpu}; gpu replica pid {replicas[Device.GPU][1]}")
            assert str(replicas[Device.GPU][1]) in on_gpu
            assert str(replicas[Device.CPU][1]) not in on_gpu
            print("both replicas running:", await call("gpu"), await call("cpu"))
            for frozen in (Device.CPU, Device.GPU):
                pid = replicas[frozen][1]
                os.kill(pid, signal.SIGSTOP)
                try:
                    started = time.monotonic()
                    gpu_answer, cpu_answer = await call("gpu"), await call("cpu")
                    took = time.monotonic() - started
                finally:
                    os.kill(pid, signal.SIGCONT)
                print(f"{frozen.value} replica frozen: on-gpu {gpu_answer}, on-cpu {cpu_answer}")
                print(f"  (both calls took {took:.1f} s)")
                working, stalled = (
                    (gpu_answer, cpu_answer) if frozen is Device.CPU else (cpu_answer, gpu_answer)
                )
                assert working[0] == 200, working
                assert "cat" in working[1], working
                assert stalled[0] == 504, stalled
                await asyncio.sleep(1)
    finally:
        await supervisor.close()
        await bus.close()
        await engine.dispose()
    print("ok: the gpu service's calls went to the GPU replica, the cpu service's to the CPU one")


if __name__ == "__main__":
    asyncio.run(main())
