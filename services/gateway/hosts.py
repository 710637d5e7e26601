"""The Host header check: the gateway answers only for the names it is reached by
(``GATEWAY_ALLOWED_HOSTS``), so a page on another site cannot use a browser's way to it
(DNS rebinding) and a misrouted request gets a clear 400 instead of an answer."""

from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.problems import BadRequest, problem_response


def host_name(header: str) -> str:
    """The name in a Host header, without its port (``[::1]:8000`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed(name: str, patterns: list[str]) -> bool:
    """``*`` allows any name; ``*.example.com`` allows example.com and its subdomains."""
    name = name.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and (name == pattern[2:] or name.endswith(pattern[1:])):
            return True
    return False


class HostCheck:
    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "*" not in self.allowed_hosts:
            header = next((v for k, v in scope["headers"] if k == b"host"), b"")
            name = host_name(header.decode("latin-1"))
            if not allowed(name, self.allowed_hosts):
                refused = BadRequest(
                    f"this gateway does not answer for host {name!r}; "
                    "add it to GATEWAY_ALLOWED_HOSTS"
                )
                await problem_response(refused, scope.get("path"))(scope, receive, send)
                return
        await self.app(scope, receive, send)
