"""What the gateway's request handlers work with, built at start by ``main.py``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import httpx
from starlette.requests import HTTPConnection

from services.common.access import RegistryAccess
from services.common.runtime import service_state
from services.gateway.openapi import PlatformDocument
from services.gateway.routing import RoutingTable
from services.gateway.settings import GatewaySettings

if TYPE_CHECKING:  # the model calls read this state: they import this module
    from services.gateway.calls import CallMetrics


@dataclass(frozen=True)
class GatewayState:
    settings: GatewaySettings
    routes: RoutingTable
    access: RegistryAccess
    upstreams: Mapping[str, httpx.AsyncClient]
    platform_document: PlatformDocument
    replicas: aiohttp.ClientSession
    call_metrics: CallMetrics


def gateway_state(connection: HTTPConnection) -> GatewayState:
    """The state, for plain Starlette routes (model calls) as for FastAPI dependencies."""
    return service_state(connection.app, GatewayState)
