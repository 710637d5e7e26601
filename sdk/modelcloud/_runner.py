"""``modelcloud.run()``: set the model up, then serve it over HTTP."""

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn

from modelcloud._logging import configure_logging
from modelcloud._model import Model, default_model
from modelcloud._runtime import ModelRuntime
from modelcloud._server import create_app
from modelcloud._settings import ServerSettings, SettingsError
from modelcloud.exceptions import InvalidInput, SetupFailed
from modelcloud_proto.replica_keys import REPLICA_KEY_VARIABLE

log = logging.getLogger("modelcloud.server")


def run(
    host: str = "0.0.0.0",  # noqa: S104 - served to the platform's gateway
    port: int = 9000,
    model_options: Mapping[str, Any] | None = None,
    *,
    concurrency: int = 1,
    model: Model | None = None,
) -> None:
    """Set the model up and serve it at ``http://host:port`` until interrupted.

    The platform overrides ``host``, ``port`` and the other settings through
    ``MODELCLOUD_*`` environment variables (see :mod:`modelcloud._settings`), so the same
    ``cloud_model.py`` runs unchanged on a laptop and in a deployment.
    """
    model = model or default_model
    try:
        settings = ServerSettings(
            host=host,
            port=port,
            concurrency=concurrency,
            setup_options=dict(model_options or {}),
            file_roots=(_model_folder(),),
        ).with_env()
    except SettingsError as exc:
        sys.exit(f"modelcloud: {exc}")
    # Read once, then kept from the processes the model's code starts (they need no key).
    os.environ.pop(REPLICA_KEY_VARIABLE, None)
    configure_logging(settings.log_format)
    runtime = ModelRuntime(model, settings.file_policy(), concurrency=settings.concurrency)

    print("Setting up model...", flush=True)
    if runtime.needs_options and not settings.setup_options:
        log.warning("setup waits for its options: %s", runtime.readiness_detail())
    else:
        try:
            runtime.setup(settings.setup_options)
        except InvalidInput as exc:
            sys.exit(f"modelcloud: invalid setup options: {exc.detail}")
        except SetupFailed as exc:
            sys.exit(f"modelcloud: {exc.detail}")
    print(f"Starting model server at http://{settings.host}:{settings.port}...", flush=True)
    uvicorn.run(
        create_app(
            runtime, max_body_bytes=settings.max_body_bytes, replica_key=settings.replica_key
        ),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def _model_folder() -> Path:
    """The folder of the script being run: ``file`` inputs may name paths inside it."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    return Path(script).resolve().parent if script else Path.cwd()
