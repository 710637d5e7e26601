"""Token checks against the registry: cached for seconds, and asked once however many
requests wait for the same answer."""

import asyncio

import httpx
import pytest

from services.common.access import RegistryAccess
from services.common.problems import Unauthorized


async def test_concurrent_checks_of_one_token_ask_the_registry_once() -> None:
    asked: list[str] = []

    async def registry(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        await asyncio.sleep(0.05)  # a registry that takes a moment
        if request.headers["authorization"] != "Bearer good":
            return httpx.Response(401, json={"detail": "the token is not valid"})
        if request.url.path == "/v1/me":
            return httpx.Response(200, json={"name": "ada"})
        return httpx.Response(200, json={"name": "vision", "role": "write"})

    access = RegistryAccess("http://registry", cache_s=60, transport=httpx.MockTransport(registry))
    try:
        answers = await asyncio.gather(*(access.check("Bearer good", "vision") for _ in range(50)))
        assert {(a.user, a.role) for a in answers} == {("ada", "write")}
        assert asked == ["/v1/me", "/v1/projects/vision"]  # once, not 50 times
        await access.check("Bearer good", "vision")  # cached
        assert len(asked) == 2

        refused = await asyncio.gather(
            *(access.check("Bearer bad", "vision") for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, Unauthorized) for r in refused)
        assert asked.count("/v1/me") == 2  # one lookup for the ten, and it is not cached
        with pytest.raises(Unauthorized):
            await access.check("Bearer bad", "vision")
        assert asked.count("/v1/me") == 3
    finally:
        await access.close()
