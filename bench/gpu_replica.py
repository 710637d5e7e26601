"""On the GPU machine: the builder's supervisor starts a replica of the example with a GPU,
reports it in the ``gpu`` pool, and the model in it runs on CUDA (issue 5).

Run with a Python whose environment has torch with CUDA and the SDK's dependencies; that
environment serves as the built artifact (the machine has no package index to build one).
It checks: ``builder.deployment.ready`` in the outbox names the replica with pool ``gpu``;
the replica classifies a real photo; ``nvidia-smi`` lists the replica's process on the GPU;
a replica of a CPU service gets no GPU.
"""

import asyncio
import base64
import io
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import httpx
from sqlmodel import SQLModel, select

from modelcloud_proto.specs import Device
from services.builder.backends.venv import ProcessRuntime
from services.builder.builds.models import Build, BuildState
from services.builder.deployments.models import Deployment, ReplicaRecord
from services.builder.deployments.supervisor import Supervisor
from services.builder.settings import BuilderSettings
from services.common.database import create_engine, session_factory
from services.common.events.outbox import OutboxEvent

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "imagenet-classifier"


async def deploy(supervisor: Supervisor, sessions: object, device: Device) -> dict[str, object]:
    version_id, build_id, now = uuid4(), uuid4(), datetime.now(UTC)
    artifact = {"env": sys.prefix, "code": str(EXAMPLE), "entrypoint": ["python", "cloud_model.py"]}
    async with sessions() as session:  # type: ignore[operator]
        session.add(
            Build(
                id=build_id,
                version_id=version_id,
                project="gpu",
                service="classifier",
                version=device.value,
                bundle_sha256="0" * 64,
                device=device,
                build_spec={},
                state=BuildState.SUCCEEDED,
                artifact=artifact,
                created_at=now,
            )
        )
        session.add(
            Deployment(
                version_id=version_id,
                project="gpu",
                service="classifier",
                version=device.value,
                build_id=build_id,
                desired_replicas=1,
                port=0,
                device=device,
                updated_at=now,
            )
        )
        await session.commit()
    supervisor.wake(version_id)
    for _ in range(600):
        async with sessions() as session:  # type: ignore[operator]
            events = (await session.exec(select(OutboxEvent))).all()
            ready = [
                e.envelope
                for e in events
                if e.type == "builder.deployment.ready"
                and e.envelope["data"]["version_id"] == str(version_id)
            ]
            record = (
                await session.exec(
                    select(ReplicaRecord).where(ReplicaRecord.version_id == version_id)
                )
            ).first()
        if ready and record is not None:
            return {"event": ready[0]["data"], "pid": int(record.handle)}
        await asyncio.sleep(0.5)
    raise SystemExit(f"{device} deployment did not become ready")


def probe(address: str, body: dict[str, str]) -> tuple[str, list[str]]:
    """The replica's label for the photo, and the pids nvidia-smi sees on the GPU."""
    answer = httpx.post(f"http://{address}/classify", json=body, timeout=60)
    answer.raise_for_status()
    on_gpu = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return str(answer.json()["label"]), on_gpu


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="mc-gpu-"))
    engine = create_engine(f"sqlite+aiosqlite:///{root / 'builder.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(SQLModel.metadata.create_all)
    sessions = session_factory(engine)
    settings = BuilderSettings(data_dir=root, gpus=1, health_timeout_s=300)
    supervisor = Supervisor(
        sessions=sessions,
        runtime=ProcessRuntime("gpu-check"),
        settings=settings.model_copy(update={"stop_replicas_on_exit": True}),
        relay=None,
        logs=root / "logs",
    )
    from PIL import Image
    from skimage import data

    photo = io.BytesIO()
    Image.fromarray(data.chelsea()).save(photo, format="JPEG", quality=90)
    body = {"photo": base64.b64encode(photo.getvalue()).decode()}
    try:
        for device in (Device.GPU, Device.CPU):
            ready = await deploy(supervisor, sessions, device)
            (replica,) = ready["event"]["replicas"]  # type: ignore[index]
            label, on_gpu = await asyncio.to_thread(probe, replica["address"], body)
            print(
                f"{device.value} service: pool {replica['pool']}, label "
                f"{label!r}, replica pid {ready['pid']} on the GPU: "
                f"{str(ready['pid']) in on_gpu}"
            )
            assert replica["pool"] == ("gpu" if device is Device.GPU else "cpu")
            assert "cat" in label
            assert (str(ready["pid"]) in on_gpu) == (device is Device.GPU)
    finally:
        await supervisor.close()
        await engine.dispose()
    print("ok: the gpu service's replica ran on the GPU, the cpu service's did not")


if __name__ == "__main__":
    asyncio.run(main())
