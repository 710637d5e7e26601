"""The service's typed state for request handlers: one object (a dataclass per service,
e.g. ``RegistryState``) instead of untyped ``app.state`` attributes."""

from collections.abc import Callable
from typing import TypeVar

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

S = TypeVar("S")


def set_service_state(app: Starlette, state: object) -> None:
    app.state.service = state


def service_state(app: Starlette, kind: type[S]) -> S:
    """``app``'s state, checked to be a ``kind``: a route served before the lifespan
    started (or by the wrong app) fails loudly here rather than on a missing attribute."""
    state = getattr(app.state, "service", None)
    if not isinstance(state, kind):
        raise RuntimeError(f"the app has no {kind.__name__}: its lifespan has not started")
    return state


def state_of(kind: type[S]) -> Callable[[HTTPConnection], S]:
    """A dependency giving handlers the state, typed:
    ``StateDep = Annotated[RegistryState, Depends(state_of(RegistryState))]``."""

    def dependency(connection: HTTPConnection) -> S:
        return service_state(connection.app, kind)

    return dependency
