"""Build and publish times of the example model, with both builder backends (issue 5).

Method: one run starts the registry and a builder (``modelcloud serve``, SQLite and the
local bus in a fresh data folder, a fresh build cache: nothing built before), registers the
example (``examples/imagenet-classifier``) and times, per backend (the two services share
the data folder, so they share the local event bus):

* first build: version 1.0 from ``build`` requested to ``built`` (the environment or image
  from nothing but pip's and Docker's own caches on this machine);
* rebuild after a code-only change: version 1.1, whose ``cloud_model.py`` differs by one
  comment line;
* publish to the first healthy replica: ``publish`` requested to ``online`` (setup loads
  the model; the builder polls ``/healthz``).

The Docker backend needs a running engine and the base image ``deploy/base-image.sh``
builds; ``--backends venv`` skips it.
"""

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "imagenet-classifier"
BASE_IMAGE = "modelcloud/debian-python:3.11"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bundle(comment: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(EXAMPLE.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            data = path.read_bytes()
            if path.name == "cloud_model.py":
                data += f"\n# {comment}\n".encode()
            info = tarfile.TarInfo(path.relative_to(EXAMPLE).as_posix())
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def wait_state(client: httpx.Client, url: str, *states: str, limit: float = 1800) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        body = client.get(url).json()
        if body["state"] in states:
            if body["state"] not in ("built", "online"):
                raise SystemExit(f"{url}: {body['state']}: {body['state_detail']}")
            return time.perf_counter() - started
        time.sleep(0.2)
    raise SystemExit(f"{url}: still {body['state']}")


def run_backend(backend: str, work: Path, env: dict[str, str]) -> dict[str, float]:
    registry = f"http://127.0.0.1:{free_port()}"
    builder_port = free_port()
    token = subprocess.run(
        [BIN / "modelcloud", "registry", "create-admin", "bench", "--data-dir", work / "r"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    processes = [
        subprocess.Popen(
            [
                BIN / "modelcloud",
                "serve",
                "registry",
                "--port",
                registry.rsplit(":", 1)[1],
                "--data-dir",
                work / "r",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        wait_ready(registry)
        builder_env = env | {
            "BUILDER_REGISTRY_URL": registry,
            "BUILDER_REGISTRY_TOKEN": token,
            "BUILDER_BACKEND": backend,
            "BUILDER_STOP_REPLICAS_ON_EXIT": "true",
            "BUILDER_DOCKER_BASE_IMAGES": json.dumps({"3.11": BASE_IMAGE}),
            "BUILDER_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
            # Where this machine keeps its CPU torch wheel (pip's own setting here).
            "BUILDER_FIND_LINKS": json.dumps(os.environ.get("PIP_FIND_LINKS", "").split()),
        }
        processes.append(
            subprocess.Popen(
                [
                    BIN / "modelcloud",
                    "serve",
                    "builder",
                    "--port",
                    str(builder_port),
                    "--data-dir",
                    work / "r",
                ],
                env=builder_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_ready(f"http://127.0.0.1:{builder_port}")
        client = httpx.Client(
            base_url=registry, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        client.post("/v1/projects", json={"name": "bench"}).raise_for_status()
        client.post("/v1/projects/bench/groups", json={"name": "default"}).raise_for_status()
        client.post(
            "/v1/projects/bench/services",
            json={"name": "classifier", "group": "default", "performance": {"device": "cpu"}},
        ).raise_for_status()
        times = {}
        service = "/v1/projects/bench/services/classifier/versions"
        for version, key in (("1.0", "first build"), ("1.1", "rebuild, code-only change")):
            client.post(
                service,
                data={"version": version},
                files={"bundle": ("code.tar.gz", bundle(f"version {version}"))},
            ).raise_for_status()
            client.post(f"{service}/{version}/build").raise_for_status()
            times[key] = wait_state(client, f"{service}/{version}", "built", "build_failed")
        client.post(f"{service}/1.1/publish").raise_for_status()
        times["publish to first healthy replica"] = wait_state(
            client, f"{service}/1.1", "online", "publish_failed"
        )
        client.post(f"{service}/1.1/offline").raise_for_status()
        return times
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=60)


def wait_ready(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="venv,docker")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "BUILDER_"))}
    results = {}
    for backend in args.backends.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"mc-bench-{backend}-"))
        try:
            results[backend] = run_backend(backend, work, env)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores\n")
    print("| backend | first build s | rebuild s | first / rebuild | publish to healthy s |")
    print("|---|---:|---:|---:|---:|")
    for backend, times in results.items():
        first, again = times["first build"], times["rebuild, code-only change"]
        print(
            f"| {backend} | {first:.1f} | {again:.1f} | {first / again:.1f}x | "
            f"{times['publish to first healthy replica']:.1f} |"
        )


if __name__ == "__main__":
    main()
