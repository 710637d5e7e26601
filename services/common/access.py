"""Who may do what in a project, for the services that keep no users of their own (file
store, builder): the registry's tokens and project roles decide.

For each token and project it asks the registry (``/v1/me`` and ``/v1/projects/{project}``,
with the caller's own token) and reuses the answer for ``cache_s`` seconds, so a revoked
token stops working within seconds.
"""

import hashlib
import time
from dataclasses import dataclass

import httpx
from fastapi import Request

from services.common.problems import (
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)

_ROLES = ("read", "write", "admin")


@dataclass(frozen=True)
class Access:
    user: str
    role: str

    def require(self, needed: str, project: str) -> None:
        if _ROLES.index(self.role) < _ROLES.index(needed):
            raise Forbidden(f"this needs the {needed} role on project {project!r}")


class RegistryAccess:
    def __init__(
        self,
        registry_url: str,
        *,
        cache_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(base_url=registry_url, transport=transport, timeout=10)
        self._cache_s = cache_s
        self._cache: dict[tuple[str, str], tuple[float, Access]] = {}

    async def close(self) -> None:
        await self._http.aclose()

    async def identify(self, authorization: str | None) -> str:
        """The user a token belongs to (for what any valid token may do)."""
        if not authorization:
            raise Unauthorized("send an API token: Authorization: Bearer <token>")
        key = (hashlib.sha256(authorization.encode()).hexdigest(), "")
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1].user
        me = await self._get("/v1/me", {"Authorization": authorization})
        self._cache[key] = (now, Access(user=str(me["name"]), role="read"))
        return str(me["name"])

    async def check(self, authorization: str | None, project: str) -> Access:
        if not authorization:
            raise Unauthorized("send an API token: Authorization: Bearer <token>")
        key = (hashlib.sha256(authorization.encode()).hexdigest(), project)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        headers = {"Authorization": authorization}
        me = await self._get("/v1/me", headers)
        found = await self._get(f"/v1/projects/{project}", headers)
        access = Access(user=str(me["name"]), role=str(found.get("role") or "read"))
        self._cache[key] = (now, access)
        return access

    async def _get(self, path: str, headers: dict[str, str]) -> dict[str, object]:
        try:
            response = await self._http.get(path, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"the registry cannot be reached to check the token: {exc}"
            ) from None
        if response.status_code == 401:
            raise Unauthorized(response.json().get("detail") or "the token is not valid")
        if response.status_code == 404:
            raise NotFound(response.json().get("detail") or "not found")
        if response.status_code != 200:
            raise ServiceUnavailable(f"the registry answered HTTP {response.status_code}")
        body: dict[str, object] = response.json()
        return body


async def access_to(request: Request, project: str, needed: str) -> Access:
    """The caller's access to ``project`` through the app's :class:`RegistryAccess`
    (``app.state.access``): a 401, 403 or 404 problem otherwise."""
    access: Access = await request.app.state.access.check(
        request.headers.get("authorization"), project
    )
    access.require(needed, project)
    return access
