"""What each platform service's own account may call on the registry: exactly the reads its
service makes with its token, in every project, and nothing else (no writes, no tokens, no
users or members, no other project data).

:func:`services.registry.deps.current_user` checks each call of a service account against
this list by the route's path template, so a route added later is refused to every service
role until someone lists it here. Keep it in step with the callers named below.
"""

from collections.abc import Mapping

from services.registry.accounts.models import ServiceRole

VERSIONS = "/v1/projects/{project}/services/{name}/versions"

ALLOWED: Mapping[ServiceRole, frozenset[tuple[str, str]]] = {
    # services/builder/bundles.py (BundleSource.fetch): the bundle of the version it builds.
    ServiceRole.BUILDER: frozenset({("GET", VERSIONS + "/{version}/bundle")}),
    # services/gateway/tables.py (load_from_registry): what is online, read once at start to
    # fill the routing table (events keep it current afterwards).
    ServiceRole.GATEWAY: frozenset(
        {
            ("GET", "/v1/projects"),
            ("GET", "/v1/projects/{project}/services"),
            ("GET", VERSIONS),
        }
    ),
}


def may_call(role: ServiceRole, method: str, route: str | None) -> bool:
    """Whether an account with ``role`` may call ``method`` on the route ``route`` (its path
    template, e.g. ``/v1/projects/{project}``); an unknown route is refused."""
    return route is not None and (method.upper(), route) in ALLOWED.get(role, frozenset())
