"""The key a replica asks of every caller, so that only the gateway (and the builder's
health checks) reach a model server, not any process on the host.

The builder and the gateway share one secret, the replica key (``BUILDER_REPLICA_KEY`` /
``GATEWAY_REPLICA_KEY``). Each version's replicas get a key of their own derived from it,
``HMAC-SHA256(replica key, version id)``, in ``MODELCLOUD_REPLICA_KEY``; the gateway derives
the same one and sends it in ``X-ModelCloud-Replica-Key``. A replica thus holds a key that
opens its own version only, never the shared secret or another version's key.
"""

import hashlib
import hmac
from uuid import UUID

__all__ = ["REPLICA_KEY_HEADER", "REPLICA_KEY_VARIABLE", "version_key"]

REPLICA_KEY_HEADER = "X-ModelCloud-Replica-Key"
REPLICA_KEY_VARIABLE = "MODELCLOUD_REPLICA_KEY"


def version_key(replica_key: str, version_id: UUID) -> str:
    """The key the replicas of ``version_id`` accept (64 hex digits)."""
    return hmac.new(replica_key.encode(), str(version_id).encode(), hashlib.sha256).hexdigest()
