"""The model manifest: what a model service declares (``GET /meta``).

The SDK builds it from the decorators at run time; the registry will build the same shape
by reading ``cloud_model.py`` without executing it. Both sides share these classes.
"""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class FieldType(StrEnum):
    """The data types a model can declare for its inputs, outputs and setup options."""

    IMAGE = "image"
    TEXT = "text"
    NUMBER = "number"
    BOOLEAN = "boolean"
    CATEGORY = "category"
    VECTOR = "vector"
    ARRAY = "array"
    FILE = "file"
    ANY = "any"


class FieldSpec(BaseModel):
    """One declared input, output or setup option. Only the keys meaningful to its type are set."""

    name: str
    type: FieldType
    description: str | None = None
    required: bool = True
    default: Any = None
    # number
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    # text / array
    min_length: int | None = None
    max_length: int | None = None
    # category
    choices: list[str] | None = None
    # vector
    length: int | None = None
    # file
    extension: str | None = None
    is_directory: bool | None = None
    # image
    channels: int | None = None
    # array
    item: "FieldSpec | None" = None


class CommandSpec(BaseModel):
    """A command: ``POST /<name>`` with typed inputs and outputs."""

    name: str
    description: str | None = None
    inputs: list[FieldSpec] = Field(default_factory=list)
    outputs: list[FieldSpec] = Field(default_factory=list)


class ModelManifest(BaseModel):
    """Everything a caller or the platform needs to know to talk to a model service."""

    sdk_version: str
    setup_options: list[FieldSpec] = Field(default_factory=list)
    commands: list[CommandSpec] = Field(default_factory=list)
