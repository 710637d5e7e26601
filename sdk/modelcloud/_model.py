"""What a model declares: its setup function and options, and its commands.

``modelcloud.setup`` and ``modelcloud.command`` register into one process-wide
:class:`Model`, the way the seed's ``cloud_model.py`` expects; tests and embedders can
build their own ``Model()`` and use its methods as decorators the same way.
"""

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from modelcloud.data_types import DataType
from modelcloud.version import __version__
from modelcloud_proto.manifest import CommandSpec, FieldSpec, ModelManifest

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RESERVED_ROUTES = frozenset({"meta", "healthz", "readyz", "setup", "openapi.json", "docs"})


@dataclass(frozen=True)
class Command:
    """A declared command: ``POST /<name>`` calls ``fn(model, inputs)``."""

    name: str
    fn: Callable[..., Any]
    inputs: Mapping[str, DataType]
    outputs: Mapping[str, DataType]
    description: str | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @property
    def accepts_uploads(self) -> bool:
        return any(t.kind in ("image", "file") for t in self.inputs.values())

    def spec(self) -> CommandSpec:
        return CommandSpec(
            name=self.name,
            description=self.description,
            inputs=specs(self.inputs),
            outputs=specs(self.outputs),
        )


def specs(fields: Mapping[str, DataType]) -> list[FieldSpec]:
    return [data_type.spec(name) for name, data_type in fields.items()]


@dataclass
class Model:
    """The declarations of one model service."""

    setup_fn: Callable[..., Any] | None = None
    setup_options: dict[str, DataType] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)

    @overload
    def setup(self, fn: F, /) -> F: ...
    @overload
    def setup(
        self, fn: None = None, /, *, options: Mapping[str, DataType] | None = None
    ) -> Callable[[F], F]: ...

    def setup(
        self, fn: F | None = None, /, *, options: Mapping[str, DataType] | None = None
    ) -> F | Callable[[F], F]:
        """Declare the function that loads the model; its return value is passed to commands.

        Use it bare (``@modelcloud.setup``) or with typed options
        (``@modelcloud.setup(options={'checkpoint': file(extension='.pkl')})``), in which
        case the function receives a dict of option values.
        """

        def register(fn: F) -> F:
            _check_fields(options or {}, "setup option")
            if self.setup_fn is not None and not _same_function(self.setup_fn, fn):
                raise ValueError(
                    f"setup is declared twice ({self.setup_fn.__qualname__} and {fn.__qualname__})"
                )
            self.setup_fn = fn
            self.setup_options = dict(options or {})
            return fn

        return register(fn) if fn is not None else register

    def command(
        self,
        name: str,
        inputs: Mapping[str, DataType] | None = None,
        outputs: Mapping[str, DataType] | None = None,
        description: str | None = None,
    ) -> Callable[[F], F]:
        """Declare a command served at ``POST /<name>``.

        The function is called as ``fn(model, inputs)``, where ``model`` is what setup
        returned and ``inputs`` a dict of decoded values; it returns a dict with one entry
        per declared output.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"command name {name!r} must be 1-64 letters, digits, '_' or '-', "
                "starting with a letter or digit"
            )
        if name in RESERVED_ROUTES:
            raise ValueError(f"command name {name!r} is reserved by the model server")
        _check_fields(inputs or {}, "input")
        _check_fields(outputs or {}, "output")

        def register(fn: F) -> F:
            existing = self.commands.get(name)
            if existing is not None and not _same_function(existing.fn, fn):
                raise ValueError(f"command {name!r} is declared twice")
            self.commands[name] = Command(
                name=name,
                fn=fn,
                inputs=dict(inputs or {}),
                outputs=dict(outputs or {}),
                description=description if description is not None else inspect.getdoc(fn),
            )
            return fn

        return register

    def manifest(self) -> ModelManifest:
        return ModelManifest(
            sdk_version=__version__,
            setup_options=specs(self.setup_options),
            commands=[command.spec() for command in self.commands.values()],
        )


def _check_fields(fields: Mapping[str, DataType], what: str) -> None:
    for name, data_type in fields.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{what} name {name!r} must be letters, digits, '_' or '-'")
        if not isinstance(data_type, DataType):
            raise TypeError(
                f"{what} {name!r} must be a data type such as image() or text(), "
                f"not {type(data_type).__name__}"
            )


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    # Re-importing a script (a reload, a test importing it twice) re-declares the same names.
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


default_model = Model()
