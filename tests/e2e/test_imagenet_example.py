"""The example model, served the way its author runs it, classifies real photos.

The photos are scikit-image's bundled samples (Chelsea the cat, a cup of coffee), real
photographs that nobody here drew; the model and its weights install from the package
index. Nothing is downloaded at run time.
"""

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from skimage import data as photos

from modelcloud.client import ModelClient

pytestmark = pytest.mark.model

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "imagenet-classifier"
CAT_LABELS = {"tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
COFFEE_LABELS = {"espresso", "cup", "coffee mug"}


def jpeg_base64(pixels: object) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)  # type: ignore[arg-type]
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def model_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("example") / "server.log"
    with log.open("w") as out:
        # Run from another folder: the script must find labels.json next to itself.
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE / "cloud_model.py")],
            cwd=log.parent,
            env={**os.environ, "MODELCLOUD_PORT": str(port), "MODELCLOUD_HOST": "127.0.0.1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with ModelClient(url) as client:
            client.wait_ready(timeout=120)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
    printed = log.read_text().splitlines()
    assert printed[0] == "Setting up model..."
    assert f"Starting model server at http://127.0.0.1:{port}..." in printed


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_as_in_the_issue_classifies_the_cat(model_url, tmp_path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"photo": jpeg_base64(photos.chelsea())}))
    done = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{model_url}/classify", "-d", f"@{body}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout)["label"] in CAT_LABELS


def test_coffee_photo_is_espresso_or_a_cup(model_url):
    response = httpx.post(
        f"{model_url}/classify_top",
        json={"photo": "data:image/jpeg;base64," + jpeg_base64(photos.coffee()), "k": 3},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["labels"][0] in COFFEE_LABELS
    assert len(result["scores"]) == 3
    assert result["scores"] == sorted(result["scores"], reverse=True)
    assert 0 < result["scores"][0] <= 1


def test_uploaded_photo_file_is_classified(model_url, tmp_path):
    photo = tmp_path / "chelsea.png"
    Image.fromarray(photos.chelsea()).save(photo)
    with ModelClient(model_url) as client:
        assert client.call("classify", photo=photo)["label"] in CAT_LABELS


def test_meta_healthz_and_openapi_describe_the_example(model_url):
    assert httpx.get(f"{model_url}/healthz").json() == {"status": "ready"}
    meta = httpx.get(f"{model_url}/meta").json()
    assert [c["name"] for c in meta["commands"]] == ["classify", "classify_top"]
    doc = httpx.get(f"{model_url}/openapi.json").json()
    assert set(doc["paths"]) >= {"/classify", "/classify_top", "/meta", "/healthz"}


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/classify", {}, 422, "photo"),
        ("/classify", {"photo": "not base64!"}, 422, "photo"),
        ("/classify_top", {"photo": "", "k": 50}, 422, "k"),
        ("/segment", {}, 404, None),
    ],
)
def test_bad_input_to_the_real_model_is_a_4xx_problem(model_url, path, body, status, field):
    response = httpx.post(f"{model_url}{path}", json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    if field:
        assert field in [e["field"] for e in response.json()["errors"]]
