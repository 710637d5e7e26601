"""The interface a ``cloud_model.py`` declares, read from its syntax tree: uploaded code never
runs inside the registry.

Recognised, in any function of the file:

- ``@<x>.command('name', inputs={...}, outputs={...}, description='...')`` (or ``@command``),
- ``@<x>.setup`` and ``@<x>.setup(options={...})``,

with data types recognised by their final name (``image()``, ``data_types.text()``, even the
seed's ``runway.file(extension='.pkl')``) and their arguments bound to the SDK's signatures.
The result is the same :class:`ModelManifest` the SDK serves at ``GET /meta``, except for
``sdk_version``, which only the running model knows.

Whatever cannot be read without running the code (a variable passed as ``inputs``, a computed
argument, an unknown type) becomes a warning naming its line, and only that piece is left out:
a partial interface is more useful to the author than a refused upload.
"""

import ast
import asyncio
import json
import math
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from modelcloud_proto.manifest import CommandSpec, FieldSpec, FieldType, ModelManifest

__all__ = ["InterfaceError", "ParsedInterface", "parse_interface", "parse_interface_in_child"]

SDK_VERSION_UNKNOWN = "unknown"
_COMMAND_PARAMETERS = ("name", "inputs", "outputs", "description")
_SETUP_PARAMETERS = ("options",)  # keyword-only in the SDK
# modelcloud.data_types constructors: their parameters in positional order.
_DATA_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "image": ("description", "channels", "default_output_format", "max_pixels"),
    "text": ("description", "default", "min_length", "max_length"),
    "number": ("description", "default", "min", "max", "step"),
    "boolean": ("description", "default"),
    "category": ("choices", "description", "default"),
    "vector": ("length", "description", "default"),
    "array": ("item_type", "description", "default", "min_length", "max_length"),
    "file": ("description", "extension", "is_directory", "default"),
    "any": ("description", "default"),
}
_REQUIRED_ARGUMENT: Final = {"category": "choices", "array": "item_type"}
# What the SDK's DataType.spec() reports when these arguments are left at their defaults.
_SDK_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "image": {"channels": 3},
    "file": {"is_directory": False},
}
_SPEC_KEY: Final = {"min": "minimum", "max": "maximum"}
_NOT_IN_SPEC: Final = frozenset({"default_output_format", "max_pixels"})


class InterfaceError(ValueError):
    """``cloud_model.py`` is not valid Python, so nothing can be read from it."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class ParsedInterface:
    """The manifest read from the source, and what could not be read, one line each."""

    manifest: ModelManifest
    warnings: list[str]


async def parse_interface_in_child(source: str, *, timeout_s: float = 60.0) -> ParsedInterface:
    """:func:`parse_interface` in a child Python process.

    ``ast.parse`` holds the GIL from start to end, so a worker thread does not keep the
    event loop free: a 1 MiB ``cloud_model.py`` (a few KiB gzipped) stalled every other
    request for 5 s here. The child costs about 0.25 s of CPU to start; it is killed past
    ``timeout_s``. At most one child per core runs at once (uploads beyond that wait), so
    writers uploading many bundles at once cannot fill the machine with readers. Raises
    :class:`InterfaceError`.
    """
    async with _child_slots():
        return await _parse_in_child(source, timeout_s)


# One bound per event loop: asyncio primitives belong to the loop that first used them.
_SLOTS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = (
    weakref.WeakKeyDictionary()
)


def _child_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _SLOTS.get(loop)
    if slots is None:
        slots = _SLOTS[loop] = asyncio.Semaphore(os.cpu_count() or 1)
    return slots


async def _parse_in_child(source: str, timeout_s: float) -> ParsedInterface:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(source.encode()), timeout_s)
    except TimeoutError:
        raise InterfaceError(f"reading the file took more than {timeout_s:.0f} s") from None
    finally:
        if child.returncode is None:  # timed out or cancelled: never leave it running
            child.kill()
            await child.wait()
    if child.returncode != 0:  # parse_interface answers for any source: this is ours
        tail = err[-2000:].decode(errors="replace")
        raise RuntimeError(f"the interface reader exited with {child.returncode}: {tail}")
    answer = json.loads(out)
    if "error" in answer:
        raise InterfaceError(answer["error"], answer["line"])
    return ParsedInterface(ModelManifest.model_validate(answer["manifest"]), answer["warnings"])


def _child() -> None:
    """The child's side of :func:`parse_interface_in_child`: source on stdin, JSON out."""
    source = sys.stdin.buffer.read().decode()
    warnings.simplefilter("ignore")  # "invalid escape sequence" and such: not our output
    try:
        parsed = parse_interface(source)
    except InterfaceError as exc:
        answer: dict[str, Any] = {"error": exc.message, "line": exc.line}
    else:
        manifest = parsed.manifest.model_dump(mode="json")
        answer = {"manifest": manifest, "warnings": parsed.warnings}
    json.dump(answer, sys.stdout)


def parse_interface(source: str) -> ParsedInterface:
    """Read the commands and setup options that ``source`` declares, without running it.
    Blocking, and it holds the GIL: services call :func:`parse_interface_in_child`."""
    try:
        tree = ast.parse(source, filename="cloud_model.py")
    except SyntaxError as exc:
        raise InterfaceError(exc.msg, exc.lineno) from None
    except (ValueError, RecursionError, MemoryError):  # NUL bytes, absurd nesting
        raise InterfaceError("the file cannot be parsed as Python source") from None
    reader = _Reader()
    for function, decorator in _decorators(tree):
        reader.read(function, decorator)
    manifest = ModelManifest(
        sdk_version=SDK_VERSION_UNKNOWN,
        setup_options=reader.setup_options,
        commands=reader.commands,
    )
    return ParsedInterface(manifest=manifest, warnings=reader.warnings)


_Function = ast.FunctionDef | ast.AsyncFunctionDef


def _decorators(tree: ast.Module) -> Iterator[tuple[_Function, ast.expr]]:
    """Every decorator of every function, in source order (the order the SDK registers)."""
    found = [
        (function, decorator)
        for function in ast.walk(tree)
        if isinstance(function, _Function)
        for decorator in function.decorator_list
    ]
    found.sort(key=lambda pair: (pair[1].lineno, pair[1].col_offset))
    yield from found


class _Unreadable(Exception):
    """An argument the registry cannot read statically; the message says why."""


class _Reader:
    def __init__(self) -> None:
        self.commands: list[CommandSpec] = []
        self.setup_options: list[FieldSpec] = []
        self.warnings: list[str] = []
        self._setup_line: int | None = None

    def warn(self, node: ast.AST, message: str) -> None:
        self.warnings.append(f"line {getattr(node, 'lineno', '?')}: {message}")

    def read(self, function: _Function, decorator: ast.expr) -> None:
        call = decorator if isinstance(decorator, ast.Call) else None
        match _final_name(call.func if call else decorator):
            case "command" if call is not None:
                self._command(call, function)
            case "command":
                self.warn(
                    decorator, "@command needs a name, as in @modelcloud.command('x'); skipped"
                )
            case "setup":
                self._setup(decorator, call)

    def _command(self, call: ast.Call, function: _Function) -> None:
        arguments = self._bind(call, _COMMAND_PARAMETERS, "@command")
        if arguments is None:
            return
        name = _literal(arguments.get("name"))
        if not isinstance(name, str):
            self.warn(call, "the command name is not a literal string; the command is skipped")
            return
        if any(command.name == name for command in self.commands):
            self.warn(call, f"command {name!r} is declared again; the first one is kept")
            return
        description = _literal(arguments.get("description"))
        if description is _UNREADABLE or not isinstance(description, str | None):
            self.warn(call, f"the description of {name!r} is not a literal string; left out")
            description = None
        elif description is None:
            description = ast.get_docstring(function)  # as the SDK does (inspect.getdoc)
        what = f"command {name!r}"
        self.commands.append(
            CommandSpec(
                name=name,
                description=description,
                inputs=self._fields(arguments.get("inputs"), f"the inputs of {what}"),
                outputs=self._fields(arguments.get("outputs"), f"the outputs of {what}"),
            )
        )

    def _setup(self, decorator: ast.expr, call: ast.Call | None) -> None:
        if self._setup_line is not None:
            self.warn(decorator, f"setup is declared again (first at line {self._setup_line})")
            return
        self._setup_line = decorator.lineno
        if call is None:
            return
        arguments = self._bind(call, _SETUP_PARAMETERS, "@setup", positional=0)
        if arguments is not None:
            self.setup_options = self._fields(arguments.get("options"), "the setup options")

    def _fields(self, node: ast.expr | None, what: str) -> list[FieldSpec]:
        if node is None or (isinstance(node, ast.Constant) and node.value is None):
            return []
        entries = _entries(node)
        if entries is None:
            self.warn(node, f"{what} are not a literal {{'name': type(), ...}} dict; left out")
            return []
        fields: dict[str, FieldSpec] = {}  # a repeated key replaces the earlier, as in Python
        for key, value in entries:
            if not isinstance(key, str):
                self.warn(value, f"{what}: a name is not a literal string; skipped")
                continue
            spec = self._data_type(key, value, f"{what}: {key!r}")
            if spec is not None:
                fields[key] = spec
        return list(fields.values())

    def _data_type(self, name: str, node: ast.expr, what: str) -> FieldSpec | None:
        kind = _final_name(node.func) if isinstance(node, ast.Call) else None
        if not isinstance(node, ast.Call) or kind not in _DATA_TYPES:
            shown = f"{kind}() is not a known data type" if kind else "not a data type call"
            self.warn(node, f"{what}: {shown} such as image() or text(); skipped")
            return None
        arguments = self._bind(node, _DATA_TYPES[kind], f"{what}: {kind}()")
        if arguments is None:
            return None
        required = _REQUIRED_ARGUMENT.get(kind)
        if required is not None and required not in arguments:
            self.warn(node, f"{what}: {kind}() needs {required}=; skipped")
            return None
        values: dict[str, Any] = {"name": name, "type": FieldType(kind), "required": True}
        values.update(_SDK_DEFAULTS.get(kind, {}))
        for parameter, argument in arguments.items():
            if parameter == "default":
                values["required"] = False  # even when the value itself is unreadable
            if parameter == "item_type":
                values["item"] = self._data_type("item", argument, f"{what}: item_type")
                continue
            try:
                value = _ARGUMENTS[parameter](_read(argument))
            except _Unreadable as exc:
                self.warn(argument, f"{what}: {parameter}= {exc}; left out")
                continue
            if parameter not in _NOT_IN_SPEC:
                values[_SPEC_KEY.get(parameter, parameter)] = value
        try:
            return FieldSpec.model_validate(values)
        except ValidationError:  # the checks above should make this unreachable
            self.warn(node, f"{what}: the arguments do not fit {kind}(); skipped")
            return None

    def _bind(
        self,
        call: ast.Call,
        parameters: tuple[str, ...],
        what: str,
        *,
        positional: int | None = None,
    ) -> dict[str, ast.expr] | None:
        """Arguments by parameter name, as Python would bind them; None (with a warning)
        where the SDK itself would fail or the binding depends on run-time values."""
        limit = len(parameters) if positional is None else positional
        if any(isinstance(arg, ast.Starred) for arg in call.args) or any(
            keyword.arg is None for keyword in call.keywords
        ):
            self.warn(call, f"{what} has *args or **kwargs, which cannot be read; skipped")
            return None
        if len(call.args) > limit:
            self.warn(call, f"{what} has more positional arguments than it takes; skipped")
            return None
        bound = dict(zip(parameters, call.args, strict=False))
        for keyword in call.keywords:
            name = keyword.arg
            if name is None or name not in parameters or name in bound:
                self.warn(keyword, f"{what} has an unexpected argument {name}=; skipped")
                return None
            bound[name] = keyword.value
        return bound


def _final_name(node: ast.expr) -> str | None:
    """``command`` for ``command``, ``modelcloud.command`` and ``a.b.command``."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _entries(node: ast.expr) -> list[tuple[object, ast.expr]] | None:
    """The (key, value) pairs of ``{...}`` or ``dict(k=...)``; None for anything else."""
    if isinstance(node, ast.Dict):
        return [
            (_UNREADABLE if key is None else _literal(key), value)
            for key, value in zip(node.keys, node.values, strict=True)
        ]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(keyword.arg is None for keyword in node.keywords):
            return None
        return [(keyword.arg, keyword.value) for keyword in node.keywords]
    return None


_UNREADABLE: Final = object()


def _literal(node: ast.expr | None) -> object:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNREADABLE


def _read(node: ast.expr) -> object:
    value = _literal(node)
    if value is _UNREADABLE:
        raise _Unreadable("is not a literal value")
    return value


# ------------------------------------------------------------------ argument checks
# Each returns the value as FieldSpec holds it, or raises _Unreadable saying what is wrong.


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _Unreadable("is not a string")


def _number(value: object) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Unreadable("is not a finite number")
    return value


def _count(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Unreadable("is not a whole number >= 0")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Unreadable("is not True or False")
    return value


def _choices(value: object) -> list[str]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(choice, str | int | float) for choice in value)
    ):
        raise _Unreadable("is not a non-empty list of strings")
    return [str(choice) for choice in value]  # as the SDK does


def _extension(value: object) -> str | None:
    if isinstance(value, str) and value and not value.startswith("."):
        return "." + value
    return _text(value)


def _json(value: object) -> Any:
    """Defaults travel in JSON: refuse what JSON cannot hold (sets, bytes, complex, NaN)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list | tuple):
        return [_json(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _json(item) for key, item in value.items()}
    raise _Unreadable("is not a JSON value")


_ARGUMENTS: Final[dict[str, Callable[[object], Any]]] = {
    "description": _text,
    "default": _json,
    "min": _number,
    "max": _number,
    "step": _number,
    "min_length": _count,
    "max_length": _count,
    "length": _count,
    "channels": _count,
    "max_pixels": _count,
    "default_output_format": _text,
    "choices": _choices,
    "extension": _extension,
    "is_directory": _flag,
}


if __name__ == "__main__":
    _child()
