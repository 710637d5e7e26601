"""The real example (EfficientNet-Lite0 on torch) built, published, and asked about a real
photo: the whole builder path a model author takes (the venv backend here; the Docker
backend's test runs the same journey)."""

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image
from skimage import data

from modelcloud_testing.platforms import Platform
from modelcloud_testing.polling import wait_for
from modelcloud_testing.registries import make_service, upload_version

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]
CLASSIFIER = "/v1/projects/vision/services/classifier/versions/1.0"


async def build_publish_and_classify(platform: Platform) -> str:
    """Register the example, build it, publish it, and return its label for Chelsea."""
    registry = platform.registry.client
    await make_service(registry, service="classifier", performance={"device": "cpu"})
    assert (await upload_version(registry, "1.0", service="classifier")).status_code == 201
    assert (await registry.post(f"{CLASSIFIER}/build")).status_code == 202
    assert (await registry.post(f"{CLASSIFIER}/publish")).status_code == 409  # not built yet

    async def state(*wanted: str) -> dict[str, Any] | None:
        body: dict[str, Any] = (await registry.get(CLASSIFIER)).json()
        return body if body["state"] in wanted else None

    built = await wait_for(lambda: state("built", "build_failed"), timeout=800)
    assert built["state"] == "built", built["state_detail"]
    assert (await registry.post(f"{CLASSIFIER}/publish")).status_code == 202
    online = await wait_for(lambda: state("online", "publish_failed"), timeout=300)
    assert online["state"] == "online", online["state_detail"]
    photo = io.BytesIO()
    Image.fromarray(data.chelsea()).save(photo, format="JPEG", quality=90)
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(
            f"http://{online['replicas'][0]['address']}/classify",
            json={"photo": base64.b64encode(photo.getvalue()).decode()},
        )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["label"])


async def test_the_example_builds_comes_online_and_classifies_a_photo(platform: Platform) -> None:
    assert "cat" in await build_publish_and_classify(platform)
