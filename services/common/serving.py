"""How a service's HTTP server runs, the same under ``modelcloud serve`` and ``modelcloud up``.

Idle connections are kept for :data:`KEEP_ALIVE_S`, well past the 5 s after which httpx
and aiohttp pools let theirs go. With uvicorn's default of 5 s both ends timed out
together: a request sent on a connection the server was closing at that moment failed
with "Server disconnected without sending a response" (seen as a 503 from the file
store's token check, in one run of bench/filestore.py).
"""

from typing import Any

import uvicorn

KEEP_ALIVE_S = 65


def server_config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
