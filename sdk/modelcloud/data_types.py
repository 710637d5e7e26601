"""Data types for model inputs, outputs and setup options.

Each type validates and converts what a caller sends (``deserialize``) into what the model
function receives, and converts what the model returns (``serialize``) into JSON::

    from modelcloud.data_types import image, text, number

    @modelcloud.command('classify',
                        inputs={'photo': image(), 'k': number(min=1, max=10, default=3)},
                        outputs={'label': text()})

===========  ==========================================  ===================================
type         the caller sends (JSON / multipart form)    the model function sees
===========  ==========================================  ===================================
image        base64 (with or without a ``data:``         ``PIL.Image.Image`` (RGB by default)
             prefix), an http(s) URL, or an upload
text         a string                                    ``str``
number       a number (a numeric string in a form)       ``int`` or ``float``
boolean      true/false                                  ``bool``
category     one of ``choices``                          ``str``
vector       a list of numbers                           ``list[float]``
array        a list of ``item_type`` values              ``list``
file         a path inside the model folder, an          ``str``: a local path
             http(s) URL, or an upload
any          any JSON value                              the value as decoded
===========  ==========================================  ===================================
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import mimetypes
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Final

from PIL import Image, UnidentifiedImageError

from modelcloud._files import FilePolicy, FileRejected, safe_name, save_upload, unpack_archive
from modelcloud_proto.manifest import FieldSpec, FieldType

__all__ = [
    "DataType",
    "any",
    "array",
    "boolean",
    "category",
    "file",
    "image",
    "number",
    "text",
    "vector",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
_MAX_IMAGE_DOWNLOAD = 64 << 20


class InvalidValue(ValueError):
    """A value that does not fit its declared type; ``path`` locates it inside arrays."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request."""

    filename: str | None
    file: BinaryIO
    content_type: str | None = None


@dataclass(frozen=True)
class DecodeContext:
    """What decoding one request may use: the file policy and a scratch folder of its own."""

    files: FilePolicy
    workdir: Path
    from_form: bool = False


class DataType(ABC):
    """Base of every data type; subclasses say how values travel over HTTP."""

    kind: ClassVar[FieldType]

    def __init__(self, description: str | None = None, default: Any = MISSING) -> None:
        self.description = description
        self.default = default

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @abstractmethod
    def deserialize(self, value: Any, ctx: DecodeContext) -> Any:
        """Turn a value sent by a caller into what the model function receives."""

    def deserialize_upload(self, upload: Upload, ctx: DecodeContext) -> Any:
        raise InvalidValue("does not accept a file upload")

    def serialize(self, value: Any) -> Any:
        """Turn a value the model returned into JSON."""
        return self.deserialize(value, _OUTPUT_CONTEXT)

    def json_schema(self, *, multipart: bool = False) -> dict[str, Any]:
        schema = self._schema(multipart=multipart)
        if self.description:
            schema["description"] = self.description
        if not self.required and self.default is not None:
            schema["default"] = self.default
        return schema

    @abstractmethod
    def _schema(self, *, multipart: bool) -> dict[str, Any]: ...

    def spec(self, name: str) -> FieldSpec:
        return FieldSpec(
            name=name,
            type=self.kind,
            description=self.description,
            required=self.required,
            default=None if self.required else self.default,
            **self._spec_extra(),
        )

    def _spec_extra(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._spec_extra()})"


_OUTPUT_CONTEXT = DecodeContext(files=FilePolicy(), workdir=Path(tempfile.gettempdir()))


# ----------------------------------------------------------------------------- scalars


class text(DataType):
    """A string, optionally bounded in length."""

    kind = FieldType.TEXT

    def __init__(
        self,
        description: str | None = None,
        default: str | _Missing = MISSING,
        min_length: int | None = None,
        max_length: int | None = None,
    ) -> None:
        super().__init__(description, default)
        self.min_length = min_length
        self.max_length = max_length

    def deserialize(self, value: Any, ctx: DecodeContext) -> str:
        if not isinstance(value, str):
            raise InvalidValue(f"must be a string, not {_json_kind(value)}")
        if self.min_length is not None and len(value) < self.min_length:
            raise InvalidValue(f"must be at least {self.min_length} characters long")
        if self.max_length is not None and len(value) > self.max_length:
            raise InvalidValue(f"must be at most {self.max_length} characters long")
        return value

    def _schema(self, *, multipart: bool) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        if self.min_length is not None:
            schema["minLength"] = self.min_length
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        return schema

    def _spec_extra(self) -> dict[str, Any]:
        return {"min_length": self.min_length, "max_length": self.max_length}


class number(DataType):
    """An int or float within ``[min, max]``, on the ``step`` grid when a step is given.

    Whole-number steps (``step=1``) give the model an ``int``.
    """

    kind = FieldType.NUMBER

    def __init__(
        self,
        description: str | None = None,
        default: float | _Missing = MISSING,
        min: float | None = None,
        max: float | None = None,
        step: float | None = None,
    ) -> None:
        super().__init__(description, default)
        if min is not None and max is not None and min > max:
            raise ValueError(f"number(): min {min} is greater than max {max}")
        if step is not None and step <= 0:
            raise ValueError("number(): step must be positive")
        self.min, self.max, self.step = min, max, step
        if not isinstance(default, _Missing):
            self.deserialize(default, _OUTPUT_CONTEXT)

    @property
    def _integral(self) -> bool:
        return (
            self.step is not None
            and float(self.step).is_integer()
            and (self.min is None or float(self.min).is_integer())
        )

    def deserialize(self, value: Any, ctx: DecodeContext) -> int | float:
        if ctx.from_form and isinstance(value, str):
            try:
                value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
            except ValueError:
                raise InvalidValue(f"must be a number, not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValue(f"must be a number, not {_json_kind(value)}")
        if not math.isfinite(value):
            raise InvalidValue("must be a finite number")
        if self.min is not None and value < self.min:
            raise InvalidValue(f"must be at least {self.min}, got {value}")
        if self.max is not None and value > self.max:
            raise InvalidValue(f"must be at most {self.max}, got {value}")
        if self.step is not None:
            steps = (value - (self.min or 0)) / self.step
            if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
                raise InvalidValue(f"must be a multiple of {self.step} from {self.min or 0}")
        if self._integral and float(value).is_integer():
            return int(value)
        return value

    def _schema(self, *, multipart: bool) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer" if self._integral else "number"}
        if self.min is not None:
            schema["minimum"] = self.min
        if self.max is not None:
            schema["maximum"] = self.max
        if self.step is not None:
            schema["multipleOf"] = self.step
        return schema

    def _spec_extra(self) -> dict[str, Any]:
        return {"minimum": self.min, "maximum": self.max, "step": self.step}


class boolean(DataType):
    """``true`` or ``false``."""

    kind = FieldType.BOOLEAN
    _FORM_VALUES: ClassVar[dict[str, bool]] = {
        "true": True,
        "false": False,
        "1": True,
        "0": False,
        "yes": True,
        "no": False,
    }

    def __init__(self, description: str | None = None, default: bool | _Missing = MISSING) -> None:
        super().__init__(description, default)

    def deserialize(self, value: Any, ctx: DecodeContext) -> bool:
        if ctx.from_form and isinstance(value, str) and value.lower() in self._FORM_VALUES:
            return self._FORM_VALUES[value.lower()]
        if not isinstance(value, bool):
            raise InvalidValue(f"must be true or false, not {_json_kind(value)}")
        return value

    def _schema(self, *, multipart: bool) -> dict[str, Any]:
        return {"type": "boolean"}


class category(DataType):
    """One of a fixed list of strings."""

    kind = FieldType.CATEGORY

    def __init__(
        self,
        choices: Sequence[str],
        description: str | None = None,
        default: str | _Missing = MISSING,
    ) -> None:
        super().__init__(description, default)
        if not choices:
            raise ValueError("category(): choices must not be empty")
        self.choices = [str(c) for c in choices]
        if not isinstance(default, _Missing) and default not in self.choices:
            raise ValueError(f"category(): default {default!r} is not one of the choices")

    def deserialize(self, value: Any, ctx: DecodeContext) -> str:
        if value not in self.choices:
            raise InvalidValue(f"must be one of {self.choices}, not {value!r}")
        return str(value)

    def _schema(self, *, multipart: bool) -> dict[str, Any]:
        return {"type": "string", "enum": self.choices}

    def _spec_extra(self) -> dict[str, Any]:
        return {"choices": self.choices}


class any(DataType):
    """Any JSON value, passed through unchanged."""

    kind = FieldType.ANY

    def deserialize(self, value: Any, ctx: DecodeContext) -> Any:
        return value

    def _schema(self, *, multipart: bool) -> dict[str, Any]:
        return {}


# ----------------------------------------------------------------------------- collections


class vector(DataType):
    """A list of ``length`` numbers (an embedding, a latent vector)."""

    kind = FieldType.VECTOR

    def __init__(
        self,
        length: int | None = None,
        description: str | None = None,
        default: Sequence[float] | _Missing = MISSING,
    ) -> None:
        super().__init__(description, default)
        self.length = length

    def deserialize(self, value: Any, ctx: DecodeContext) -> list[float]:
        value = _from_form_json(value, ctx)
        if hasattr(value, "tolist"):  # numpy arrays returned by model code
            value = value.tolist()
        if not isinstance(value, list | tuple):
            raise InvalidValue(f"must be a list of numbers, not {_json_kind(value)}")
        if self.length is not None and len(value) != self.length:
            raise InvalidValue(f"must have exactly {self.length} numbers, got {len(value)}")
        out: list[float] = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise InvalidValue(f"must be a number, not {_json_kind(item)}", (i,))
            if not math.isfinite(item):
                raise InvalidValue("must be a finite number", (i,))
            out.append(float(item))
        return out

    def _schema(self, *, multipart: bool) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
        if self.length is not None:
            schema["minItems"] = schema["maxItems"] = self.length
        return schema

    def _spec_extra(self) -> dict[str, Any]:
        return {"length": self.length}


class array(DataType):
    """A list whose items all have ``item_type``."""

    kind = FieldType.ARRAY

    def __init__(
        self,
        item_type: DataType,
        description: str | None = None,
        default: Sequence[Any] | _Missing = MISSING,
        min_length: int | None = None,
        max_length: int | None = None,
    ) -> None:
        super().__init__(description, default)
        if not isinstance(item_type, DataType):
            raise TypeError("array(): item_type must be a data type such as text()")
        self.item_type = item_type
        self.min_length = min_length
        self.max_length = max_length

    def deserialize(self, value: Any, ctx: DecodeContext) -> list[Any]:
        value = _from_form_json(value, ctx)
        if not isinstance(value, list | tuple):
            raise InvalidValue(f"must be a list, not {_json_kind(value)}")
        self._check_length(len(value))
        out = []
        item_ctx = DecodeContext(ctx.files, ctx.workdir, from_form=False)
        for i, item in enumerate(value):
            try:
                out.append(self.item_type.deserialize(item, item_ctx))
            except InvalidValue as exc:
                raise InvalidValue(exc.message, (i, *exc.path)) from None
        return out

    def serialize(self, value: Any) -> list[Any]:
        if hasattr(value, "tolist") and not isinstance(value, Image.Image):
            value = value.tolist()
        if not isinstance(value, list | tuple):
            raise InvalidValue(f"must be a list, not {_json_kind(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(self.item_type.serialize(item))
            except InvalidValue as exc:
                raise InvalidValue(exc.message, (i, *exc.path)) from None
        return out

    def _check_length(self, n: int) -> None:
        if self.min_length is not None and n < self.min_length:
            raise InvalidValue(f"must have at least {self.min_length} items, got {n}")
        if self.max_length is not None and n > self.max_length:
            raise InvalidValue(f"must have at most {self.max_length} items, got {n}")

    def _schema(self, *, multipart: bool) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.item_type.json_schema()}
        if self.min_length is not None:
            schema["minItems"] = self.min_length
        if self.max_length is not None:
            schema["maxItems"] = self.max_length
        return schema

    def _spec_extra(self) -> dict[str, Any]:
        return {
            "item": self.item_type.spec("item"),
            "min_length": self.min_length,
            "max_length": self.max_length,
        }


# ----------------------------------------------------------------------------- binary


class image(DataType):
    """A picture. Callers send base64 (a ``data:image/...;base64,`` prefix is optional), an
    http(s) URL, or a multipart upload; the model receives a ``PIL.Image.Image`` converted to
    ``channels`` (3: RGB, 4: RGBA, 1: grayscale). Returned images (PIL or numpy arrays) are
    sent back as base64 ``data:`` URLs in ``default_output_format`` (JPEG or PNG).
    """

    kind = FieldType.IMAGE
    _MODES: ClassVar[dict[int, str]] = {1: "L", 3: "RGB", 4: "RGBA"}

    def __init__(
        self,
        description: str | None = None,
        channels: int = 3,
        default_output_format: str = "JPEG",
        max_pixels: int = 50_000_000,
    ) -> None:
        super().__init__(description)
        if channels not in self._MODES:
            raise ValueError("image(): channels must be 1, 3 or 4")
        if default_output_format.upper() not in ("JPEG", "PNG"):
            raise ValueError("image(): default_output_format must be 'JPEG' or 'PNG'")
        self.channels = channels
        self.output_format = default_output_format.upper()
        self.max_pixels = max_pixels

    def deserialize(self, value: Any, ctx: DecodeContext) -> Image.Image:
        if isinstance(value, Image.Image):
            return value
        if not isinstance(value, str):
            raise InvalidValue(f"must be a base64-encoded image or a URL, not {_json_kind(value)}")
        if value.startswith(("http://", "https://")):
            buffer = io.BytesIO()
            try:
                ctx.files.download(value, buffer, limit=_MAX_IMAGE_DOWNLOAD)
            except FileRejected as exc:
                raise InvalidValue(str(exc)) from None
            return self._open(buffer.getvalue())
        return self._open(_decode_base64(value))

    def deserialize_upload(self, upload: Upload, ctx: DecodeContext) -> Image.Image:
        return self._open(upload.file.read())

    def _open(self, data: bytes) -> Image.Image:
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > self.max_pixels:
                raise InvalidValue(
                    f"image is {width}x{height}, over the limit of {self.max_pixels} pixels"
                )
            img.load()
        except (UnidentifiedImageError, Image.DecompressionBombError):
            raise InvalidValue("is not a decodable image (JPEG, PNG, WebP, ...)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, InvalidValue):
                raise
            raise InvalidValue(f"is a damaged image: {exc}") from None
        mode = self._MODES[self.channels]
        return img if img.mode == mode else img.convert(mode)

    def serialize(self, value: Any) -> str:
        if not isinstance(value, Image.Image):
            if not hasattr(value, "__array_interface__"):
                raise InvalidValue(f"must be a PIL image or an array, not {_json_kind(value)}")
            value = Image.fromarray(value)
        fmt = self.output_format
        if fmt == "JPEG" and value.mode not in ("RGB", "L"):
            # JPEG has no alpha: keep transparency as PNG, flatten anything else to RGB.
            if value.mode in ("RGBA", "LA", "P"):
                fmt = "PNG"
            else:
                value = value.convert("RGB")
        buffer = io.BytesIO()
        value.save(buffer, format=fmt)
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        return f"data:image/{fmt.lower()};base64,{encoded}"

    def _schema(self, *, multipart: bool) -> dict[str, Any]:
        if multipart:
            return {"type": "string", "format": "binary"}
        return {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/*"}

    def _spec_extra(self) -> dict[str, Any]:
        return {"channels": self.channels}


class file(DataType):
    """A file (or, with ``is_directory=True``, a folder) that the model reads from disk.

    Callers give a path inside the model's folder, an http(s) URL, or a multipart upload;
    folders arrive as .zip or .tar archives and are unpacked. The model receives a local
    path (``str``). ``extension`` (e.g. ``'.pkl'``) is checked case-insensitively.
    """

    kind = FieldType.FILE

    def __init__(
        self,
        description: str | None = None,
        extension: str | None = None,
        is_directory: bool = False,
        default: str | _Missing | None = MISSING,
    ) -> None:
        super().__init__(description, default)
        if extension is not None and not extension.startswith("."):
            extension = "." + extension
        self.extension = extension
        self.is_directory = is_directory

    def deserialize(self, value: Any, ctx: DecodeContext) -> str:
        if not isinstance(value, str) or not value:
            raise InvalidValue(f"must be a path or a URL, not {_json_kind(value)}")
        try:
            if value.startswith(("http://", "https://")):
                name = safe_name(value.split("?", 1)[0].rsplit("/", 1)[-1], "download")
                target = ctx.workdir / uuid.uuid4().hex / name
                target.parent.mkdir(parents=True)
                try:
                    with target.open("wb") as out:
                        ctx.files.download(value, out)
                except FileRejected:
                    shutil.rmtree(target.parent, ignore_errors=True)
                    raise
                return self._accept(target, ctx)
            path = ctx.files.local_path(value)
        except FileRejected as exc:
            raise InvalidValue(str(exc)) from None
        if self.is_directory and not path.is_dir():
            raise InvalidValue("must be a folder")
        if not self.is_directory and not path.is_file():
            raise InvalidValue("must be a file, not a folder")
        self._check_extension(path.name)
        return str(path)

    def deserialize_upload(self, upload: Upload, ctx: DecodeContext) -> str:
        name = safe_name(upload.filename, "upload")
        target = save_upload(upload.file, ctx.workdir / uuid.uuid4().hex / name)
        try:
            return self._accept(target, ctx)
        except FileRejected as exc:
            raise InvalidValue(str(exc)) from None

    def _accept(self, downloaded: Path, ctx: DecodeContext) -> str:
        if self.is_directory:
            unpacked = downloaded.parent / "unpacked"
            return str(unpack_archive(downloaded, unpacked, ctx.files.archive_limits))
        self._check_extension(downloaded.name)
        return str(downloaded)

    def _check_extension(self, name: str) -> None:
        if self.extension and not name.lower().endswith(self.extension.lower()):
            raise InvalidValue(f"must be a {self.extension} file, got {name!r}")

    def serialize(self, value: Any) -> str:
        path = Path(value)
        if not path.is_file():
            raise InvalidValue(f"must be the path of an existing file, not {str(value)!r}")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"data:{media_type};base64,{encoded}"

    def _schema(self, *, multipart: bool) -> dict[str, Any]:
        if multipart:
            return {"type": "string", "format": "binary"}
        return {"type": "string", "description": "a path inside the model folder or a URL"}

    def _spec_extra(self) -> dict[str, Any]:
        return {"extension": self.extension, "is_directory": self.is_directory}


# ----------------------------------------------------------------------------- helpers


def _decode_base64(value: str) -> bytes:
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidValue("data: URL must be base64-encoded (data:<type>;base64,<data>)")
    compact = "".join(value.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidValue("is not valid base64") from None


def _from_form_json(value: Any, ctx: DecodeContext) -> Any:
    if ctx.from_form and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise InvalidValue("must be a JSON list in a form field") from None
    return value


def _json_kind(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list() | tuple():
            return "a list"
        case dict():
            return "an object"
    return type(value).__name__
