"""``modelcloud.yml``: how to build and run a bundle (seed 001's ``python``, ``cuda``,
``entrypoint``, ``build_steps``, plus ``if_gpu``/``if_cpu`` and ``concurrency``) and an
optional ``service:`` block suggesting the page metadata of seed 001's Step 2.

The file is optional; without it a bundle builds with the seed's defaults. Errors name the
dotted path of the offending key (``modelcloud.yml.build_steps.0``) so the caller can point
at it.
"""

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError
from pydantic_core import ErrorDetails

from modelcloud_proto.specs import BuildSpec, PerformanceNotes, ServiceLinks
from services.common.bounded_yaml import YamlRejected, load_yaml
from services.registry.names import Name

__all__ = ["BuildFile", "BuildFileRejected", "ServiceDefaults", "parse_build_file"]

FILE = "modelcloud.yml"
MAX_BYTES = 256 << 10
REQUIREMENTS_STEP = "pip install -r requirements.txt"


class BuildFileRejected(ValueError):
    """``errors`` lists (dotted field path, message) pairs; paths start with ``modelcloud.yml``."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {message}" for path, message in errors))
        self.errors = errors


class ServiceDefaults(BaseModel):
    """Page metadata a bundle suggests for its model service; what was registered wins.

    Limits match the registry's own service metadata, so anything accepted here can be
    applied to a service as it is.
    """

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    tagline: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=20_000, description="Markdown")
    license: str | None = Field(default=None, max_length=100)
    performance: PerformanceNotes | None = None
    links: ServiceLinks | None = None
    gallery: list[HttpUrl] = Field(default_factory=list, max_length=50)


class _BuildFileSchema(BuildSpec):
    """The whole file: the build spec's keys plus ``service:`` (still no unknown keys)."""

    service: ServiceDefaults | None = None


@dataclass(frozen=True)
class BuildFile:
    """What ``modelcloud.yml`` says, with the defaults filled in."""

    build_spec: BuildSpec
    service: ServiceDefaults | None = None


def parse_build_file(text: str | None, *, has_requirements: bool) -> BuildFile:
    """Read ``modelcloud.yml`` (``None`` when the bundle has none).

    Without ``build_steps`` (or without the file) a bundle with a ``requirements.txt`` gets
    ``pip install -r requirements.txt``, as the seed's example file spells out. The YAML is
    read with its size, nesting depth and aliases bounded (``services.common.bounded_yaml``);
    blocking, so async callers run it in a worker thread.
    """
    default_steps = [REQUIREMENTS_STEP] if has_requirements else []
    if text is None:
        return BuildFile(build_spec=BuildSpec(build_steps=default_steps))
    raw = _load(text)
    if raw.get("build_steps") is None:  # absent, or an empty `build_steps:` line
        raw["build_steps"] = default_steps
    try:
        parsed = _BuildFileSchema.model_validate(raw)
    except ValidationError as exc:
        raise BuildFileRejected(_errors(exc, raw)) from None
    spec = BuildSpec.model_validate(parsed.model_dump(exclude={"service"}))
    return BuildFile(build_spec=spec, service=parsed.service)


def _load(text: str) -> dict[Any, Any]:
    try:
        raw: Any = load_yaml(text, max_bytes=MAX_BYTES)
    except YamlRejected as exc:
        raise BuildFileRejected([(FILE, exc.message)]) from None
    if raw is None:  # an empty file, or only comments
        return {}
    if not isinstance(raw, dict):
        raise BuildFileRejected([(FILE, "must be a mapping of keys to values")])
    return raw


_STEP_LISTS = ("build_steps", "if_gpu", "if_cpu")


def _errors(exc: ValidationError, raw: dict[Any, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    for error in exc.errors():
        key = error["loc"][0] if len(error["loc"]) == 1 else None
        if key in _STEP_LISTS and isinstance(raw[key], list):
            # BuildSpec checks the steps as a list; name the step at fault instead.
            errors.extend(_step_errors(str(key), raw[key]) or [_error(error)])
        else:
            errors.append(_error(error))
    return errors


def _step_errors(key: str, steps: list[Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    for index, step in enumerate(steps):
        try:
            BuildSpec.model_validate({key: [step]})
        except ValidationError as exc:
            errors.extend((f"{FILE}.{key}.{index}", _error(e)[1]) for e in exc.errors())
    return errors


def _error(error: ErrorDetails) -> tuple[str, str]:
    path = ".".join([FILE, *(str(part) for part in error["loc"])])
    if error["type"] == "extra_forbidden":
        return path, "is not a known key"
    return path, error["msg"].removeprefix("Value error, ")
