"""Shared descriptions of a model service: its build spec and its performance notes.

The registry stores them, the builder builds and runs from them, the gateway routes by them.
"""

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

_STEP_MAX = 2000


class Device(StrEnum):
    """Where a model prefers to run; the gateway routes ``any`` to GPUs first."""

    CPU = "cpu"
    GPU = "gpu"
    ANY = "any"


class BuildSpec(BaseModel):
    """``modelcloud.yml``'s build part (the seed's fields plus ``if_gpu``/``if_cpu`` steps).

    Build steps are argument-free shell-like command lines kept as a validated list; the
    builder never pastes them into a shell line or a Dockerfile unescaped.
    """

    model_config = ConfigDict(extra="forbid")

    python: str = Field(default="3.11", pattern=r"^3\.\d{1,2}$", description="e.g. 3.11")
    cuda: str | None = Field(default=None, pattern=r"^\d{1,2}\.\d{1,2}$", description="e.g. 12.4")
    entrypoint: str = Field(default="python cloud_model.py", min_length=1, max_length=500)
    build_steps: list[str] = Field(default_factory=list, max_length=100)
    if_gpu: list[str] = Field(default_factory=list, max_length=100)
    if_cpu: list[str] = Field(default_factory=list, max_length=100)
    concurrency: int = Field(default=1, ge=1, le=256, description="MODELCLOUD_CONCURRENCY")

    @field_validator("python", "cuda", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # The seed writes `python: 3.6` unquoted, which YAML reads as a float: take it. But
        # `3.10` arrives as 3.1 and `12.10` as 12.1, which cannot be told apart from what
        # was meant, so a float whose minor version has one digit ending the text is only
        # taken when it cannot be such a truncation (3.6 yes, 3.1 no).
        if isinstance(value, float):
            text = repr(value)
            if text.endswith(".1"):
                raise ValueError("write the version as a quoted string, e.g. '3.10'")
            return text
        return value

    @field_validator("build_steps", "if_gpu", "if_cpu")
    @classmethod
    def _steps_are_single_lines(cls, steps: list[str]) -> list[str]:
        for step in steps:
            if not step.strip() or len(step) > _STEP_MAX or re.search(r"[\r\n\x00]", step):
                raise ValueError("each build step is one non-empty line of at most 2000 chars")
        return steps


class PerformanceNotes(BaseModel):
    """What to expect of the model on GPU or CPU, in words and in fields the gateway uses."""

    model_config = ConfigDict(extra="forbid")

    device: Device = Device.ANY
    memory: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti)?$")
    latency_ms: float | None = Field(default=None, ge=0)
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="the longest one call may run; the gateway answers 504 past it "
        "(default: the gateway's own bound)",
    )
    notes: str | None = Field(default=None, max_length=5000)


class ServiceLinks(BaseModel):
    """Resources about the model: its code, its paper, a blog post, anything else."""

    model_config = ConfigDict(extra="forbid")

    code: HttpUrl | None = None
    paper: HttpUrl | None = None
    blog: HttpUrl | None = None
    other: list[HttpUrl] = Field(default_factory=list, max_length=20)
