"""Gateway fixtures: the builder's (a registry and a builder on one local bus, real venv
replicas), plus a gateway in front of them."""

from services.builder.tests.conftest import (  # noqa: F401 - fixtures used here
    build_cache,
    builder_settings,
    platform,
    registry,
)
