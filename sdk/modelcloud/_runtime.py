"""Runs a declared model: setup, and per request decode -> predict -> encode.

Concurrency: model functions are synchronous Python; they run in worker threads so the
event loop keeps accepting and parsing requests. At most ``concurrency`` predictions run at
once (default 1: most models are not thread-safe and a framework like torch already uses
every core for one call); requests beyond that wait in line. Input decoding (base64, image
decoding, downloads) happens in other worker threads, outside that limit, so it overlaps
with the running prediction. ``async def`` commands run on the event loop itself.

Cancellation (the server cancels a call whose caller disconnected): a call still waiting
for the limiter, or for its inputs to be decoded, is dropped before the model sees its
inputs; an ``async def`` command is cancelled where it awaits (``asyncio.CancelledError``
is raised in it, so ``try/finally`` blocks run); a synchronous command already running
cannot be stopped (Python cannot kill a thread): it runs to its end and holds its place
under the limit until then, and its result is discarded.
"""

import inspect
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio.to_thread

from modelcloud._files import FilePolicy
from modelcloud._model import Command, Model
from modelcloud.data_types import MISSING, DataType, DecodeContext, InvalidValue, Upload
from modelcloud.exceptions import (
    FieldError,
    InvalidInput,
    InvalidOutput,
    ModelCloudError,
    ModelError,
    ModelNotReady,
    SetupFailed,
    UnknownCommand,
)

log = logging.getLogger("modelcloud.model")
_MAX_ERROR_DETAIL = 500


class ModelStatus(StrEnum):
    AWAITING_OPTIONS = "awaiting_setup_options"
    SETTING_UP = "setting_up"
    READY = "ready"
    SETUP_FAILED = "setup_failed"


class ModelRuntime:
    """The live state of one model in this process."""

    def __init__(
        self,
        model: Model,
        files: FilePolicy,
        *,
        concurrency: int = 1,
        scratch_dir: Path | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.model = model
        self.files = files
        self.concurrency = concurrency
        self.status = ModelStatus.AWAITING_OPTIONS
        self.setup_error: str | None = None
        self.instance: Any = None
        self._scratch_root = scratch_dir
        self._setup_dir: Path | None = None
        self._setup_lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(concurrency)

    # ------------------------------------------------------------------ setup

    @property
    def needs_options(self) -> bool:
        return any(t.required for t in self.model.setup_options.values())

    def setup(self, raw_options: Mapping[str, Any], uploads: Mapping[str, Upload] = {}) -> None:
        """Decode the options and run the setup function (blocking; call from a thread).

        A failure leaves the previous model in place; the error is kept for ``/healthz``.
        """
        with self._setup_lock:
            workdir = self._new_scratch()
            try:
                options = decode_fields(
                    self.model.setup_options,
                    raw_options,
                    uploads,
                    DecodeContext(self.files, workdir),
                    what="a setup option",
                )
            except InvalidInput:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            previous = self.status
            if previous is not ModelStatus.READY:  # a serving model keeps serving meanwhile
                self.status = ModelStatus.SETTING_UP
            try:
                instance = self._call_setup(options)
            except Exception as exc:
                shutil.rmtree(workdir, ignore_errors=True)
                log.exception("setup failed")
                self.setup_error = _describe(exc)
                # A model that was serving keeps serving its previous instance.
                self.status = (
                    ModelStatus.READY if previous is ModelStatus.READY else ModelStatus.SETUP_FAILED
                )
                raise SetupFailed(f"setup raised {self.setup_error}") from exc
            old_dir, self._setup_dir = self._setup_dir, workdir
            self.instance = instance
            self.setup_error = None
            self.status = ModelStatus.READY
            if old_dir is not None:
                shutil.rmtree(old_dir, ignore_errors=True)

    def _call_setup(self, options: dict[str, Any]) -> Any:
        fn = self.model.setup_fn
        if fn is None:
            return None
        if self.model.setup_options or _takes_argument(fn):
            return fn(options)
        return fn()

    async def setup_async(
        self, raw_options: Mapping[str, Any], uploads: Mapping[str, Upload] = {}
    ) -> None:
        await anyio.to_thread.run_sync(self.setup, raw_options, uploads)

    # ------------------------------------------------------------------ commands

    def command(self, name: str) -> Command:
        try:
            return self.model.commands[name]
        except KeyError:
            known = ", ".join(sorted(self.model.commands)) or "none"
            raise UnknownCommand(
                f"this model has no command {name!r} (commands: {known})"
            ) from None

    async def call(
        self,
        command: Command,
        raw_inputs: Mapping[str, Any],
        uploads: Mapping[str, Upload] = {},
        *,
        from_form: bool = False,
    ) -> dict[str, Any]:
        """Decode the inputs, run the command and encode its outputs."""
        if self.status is not ModelStatus.READY:
            raise ModelNotReady(self.readiness_detail())
        workdir = self._new_scratch()
        try:
            ctx = DecodeContext(self.files, workdir, from_form=from_form)
            if command.accepts_uploads or from_form:
                inputs = await anyio.to_thread.run_sync(
                    decode_fields, command.inputs, raw_inputs, uploads, ctx
                )
            else:
                inputs = decode_fields(command.inputs, raw_inputs, uploads, ctx)
            if command.is_async:
                result = await self._predict_async(command, inputs)
                return encode_outputs(command, result)
            return await anyio.to_thread.run_sync(
                self._predict_and_encode, command, inputs, limiter=self._limiter
            )
        finally:
            if workdir.exists():
                # Shielded: a cancelled call (its caller left) still removes its files.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)

    def _predict_and_encode(self, command: Command, inputs: dict[str, Any]) -> dict[str, Any]:
        try:
            result = command.fn(self.instance, inputs)
        except ModelCloudError:
            raise
        except Exception as exc:
            log.exception("command %s failed", command.name)
            raise ModelError(f"{command.name} raised {_describe(exc)}") from exc
        return encode_outputs(command, result)

    async def _predict_async(self, command: Command, inputs: dict[str, Any]) -> Any:
        try:
            return await command.fn(self.instance, inputs)
        except ModelCloudError:
            raise
        except Exception as exc:
            log.exception("command %s failed", command.name)
            raise ModelError(f"{command.name} raised {_describe(exc)}") from exc

    def readiness_detail(self) -> str:
        match self.status:
            case ModelStatus.AWAITING_OPTIONS:
                missing = [n for n, t in self.model.setup_options.items() if t.required]
                return f"setup needs options first: POST /setup with {missing}"
            case ModelStatus.SETTING_UP:
                return "the model is still setting up"
            case ModelStatus.SETUP_FAILED:
                return f"setup failed: {self.setup_error}"
        return "ready"

    def _new_scratch(self) -> Path:
        # Created lazily by the file type, so requests without files touch no disk.
        root = self._scratch_root or Path(tempfile.gettempdir())
        return root / f"modelcloud-{uuid.uuid4().hex}"


def decode_fields(
    fields: Mapping[str, DataType],
    raw: Mapping[str, Any],
    uploads: Mapping[str, Upload],
    ctx: DecodeContext,
    what: str = "an input",
) -> dict[str, Any]:
    """Decode every declared field, collecting one error per bad field."""
    errors: list[FieldError] = []
    values: dict[str, Any] = {}
    for name in [*raw, *uploads]:
        if name not in fields:
            known = ", ".join(fields) or "none"
            errors.append(FieldError(field=name, message=f"is not {what} (expected: {known})"))
    for name, data_type in fields.items():
        try:
            if name in uploads:
                values[name] = data_type.deserialize_upload(uploads[name], ctx)
            elif name in raw:
                values[name] = data_type.deserialize(raw[name], ctx)
            elif data_type.default is not MISSING:
                values[name] = data_type.default
            else:
                errors.append(FieldError(field=name, message="is required"))
        except InvalidValue as exc:
            path = ".".join(str(p) for p in (name, *exc.path))
            errors.append(FieldError(field=path, message=exc.message))
    if errors:
        raise InvalidInput(errors=errors)
    return values


def encode_outputs(command: Command, result: Any) -> dict[str, Any]:
    """Check a command's return value against its declared outputs and make it JSON."""
    outputs = command.outputs
    if not isinstance(result, Mapping):
        if len(outputs) != 1:
            raise InvalidOutput(
                f"{command.name} must return a dict with {list(outputs)}, "
                f"not {type(result).__name__}"
            )
        result = {next(iter(outputs)): result}
    missing = [name for name in outputs if name not in result]
    if missing:
        raise InvalidOutput(f"{command.name} returned no {missing}")
    encoded: dict[str, Any] = {}
    for name, data_type in outputs.items():
        try:
            encoded[name] = data_type.serialize(result[name])
        except InvalidValue as exc:
            path = ".".join(str(p) for p in (name, *exc.path))
            raise InvalidOutput(f"{command.name} returned a bad {path!r}: {exc.message}") from None
    return encoded


def _takes_argument(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_DETAIL else text[: _MAX_ERROR_DETAIL - 3] + "..."
