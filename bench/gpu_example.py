"""Serve the example model on the GPU machine and classify real photos through HTTP.

Run where a CUDA GPU is present: it checks that ``cloud_model.py`` picked ``cuda``, that the
labels are right, and prints the served p50 on the GPU next to the in-process GPU p50.
"""

import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from PIL import Image
from skimage import data as photos

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "imagenet-classifier"


def jpeg(pixels: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)  # type: ignore[arg-type]
    return buffer.getvalue()


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    sys.path.insert(0, str(EXAMPLE))
    import cloud_model  # the example, loaded in-process for the baseline

    print("cloud_model device:", cloud_model.device)
    model = cloud_model.setup()
    cat = jpeg(photos.chelsea())
    inproc = []
    for i in range(60):
        started = time.perf_counter()
        label = cloud_model.classify(model, {"photo": Image.open(io.BytesIO(cat))})["label"]
        if i >= 10:
            inproc.append((time.perf_counter() - started) * 1000)
    print("in-process:", label, f"p50 {statistics.median(inproc):.2f} ms")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MODELCLOUD_PORT": str(port), "MODELCLOUD_HOST": "127.0.0.1"}
    server = subprocess.Popen([sys.executable, str(EXAMPLE / "cloud_model.py")], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        served = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for name, photo in (("chelsea", cat), ("coffee", jpeg(photos.coffee()))):
                body = {"photo": base64.b64encode(photo).decode()}
                print(name, "->", client.post("/classify_top", json={**body, "k": 3}).json())
            body = {"photo": base64.b64encode(cat).decode()}
            for i in range(60):
                started = time.perf_counter()
                response = client.post("/classify", json=body)
                assert response.status_code == 200, response.text
                if i >= 10:
                    served.append((time.perf_counter() - started) * 1000)
        print("served:", response.json(), f"p50 {statistics.median(served):.2f} ms")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
