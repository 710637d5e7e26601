"""Who may do what in a project, for the services that keep no users of their own (file
store, builder): the registry's tokens and project roles decide.

For each token and project it asks the registry (``/v1/me`` and ``/v1/projects/{project}``,
with the caller's own token) and reuses the answer for ``cache_s`` seconds, so a revoked
token stops working within seconds.
"""

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

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
        self._pending: dict[tuple[str, str], asyncio.Future[Access]] = {}

    async def close(self) -> None:
        await self._http.aclose()

    async def identify(self, authorization: str | None) -> str:
        """The user a token belongs to (for what any valid token may do)."""
        if not authorization:
            raise Unauthorized("send an API token: Authorization: Bearer <token>")

        async def lookup() -> Access:
            me = await self._get("/v1/me", {"Authorization": authorization})
            return Access(user=str(me["name"]), role="read")

        return (await self._cached((_digest(authorization), ""), lookup)).user

    async def check(self, authorization: str | None, project: str) -> Access:
        if not authorization:
            raise Unauthorized("send an API token: Authorization: Bearer <token>")

        async def lookup() -> Access:
            headers = {"Authorization": authorization}
            me = await self._get("/v1/me", headers)
            # Quoted: a name with a control character in it is no URL, and the registry
            # says whether it names a project (422 or 404: it does not).
            found = await self._get(f"/v1/projects/{quote(project, safe='')}", headers)
            return Access(user=str(me["name"]), role=str(found.get("role") or "read"))

        return await self._cached((_digest(authorization), project), lookup)

    async def _cached(
        self, key: tuple[str, str], lookup: Callable[[], Awaitable[Access]]
    ) -> Access:
        """The cached answer while it is fresh; else one lookup, which every caller asking
        meanwhile awaits (when an answer expires under load, the registry is asked once,
        not once per request in flight)."""
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(self._refresh(key, lookup))
        return await asyncio.shield(pending)

    async def _refresh(
        self, key: tuple[str, str], lookup: Callable[[], Awaitable[Access]]
    ) -> Access:
        try:
            asked = time.monotonic()
            access = await lookup()
            self._cache[key] = (asked, access)
            return access
        finally:
            del self._pending[key]

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
        if response.status_code == 422:
            # The registry refused the name itself (control characters, too long): no
            # project can have it, which is what the caller is told.
            raise NotFound("no project by that name")
        if response.status_code != 200:
            raise ServiceUnavailable(f"the registry answered HTTP {response.status_code}")
        body: dict[str, object] = response.json()
        return body


def _digest(authorization: str) -> str:
    return hashlib.sha256(authorization.encode()).hexdigest()


async def access_to(request: Request, project: str, needed: str) -> Access:
    """The caller's access to ``project`` through the app's :class:`RegistryAccess`
    (``app.state.access``): a 401, 403 or 404 problem otherwise."""
    access: Access = await request.app.state.access.check(
        request.headers.get("authorization"), project
    )
    access.require(needed, project)
    return access
