"""Training runs: who ran them, with which hyperparameters, and their metrics over steps."""

import enum
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Self
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    BaseModel,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic import Field as PydanticField
from sqlalchemy import JSON, BigInteger, Column, DateTime, Text
from sqlmodel import Field, SQLModel

KEY_PATTERN = r"^[^\x00-\x1f]{1,200}$"  # any printable name, SQL metacharacters included


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CRASHED = "crashed"


class Run(SQLModel, table=True):
    __tablename__ = "run"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    project: str = Field(max_length=64, index=True)
    experiment: str = Field(max_length=200)
    name: str = Field(max_length=200)
    user: str = Field(max_length=64, index=True)
    status: RunStatus
    started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    ended_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_seen_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    tags: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    code_version: str | None = Field(default=None, max_length=200)
    model_version: str | None = Field(default=None, max_length=200)
    notes: str = Field(default="", sa_column=Column(Text, nullable=False))
    shared: bool = False


class RunParam(SQLModel, table=True):
    __tablename__ = "run_param"

    run_id: UUID = Field(foreign_key="run.id", primary_key=True)
    key: str = Field(max_length=200, primary_key=True)
    value: str = Field(max_length=2000)


class MetricPoint(SQLModel, table=True):
    """One value of one metric at one step; a replayed (run, key, step) changes nothing."""

    __tablename__ = "metric_point"

    run_id: UUID = Field(foreign_key="run.id", primary_key=True)
    key: str = Field(max_length=200, primary_key=True)
    step: int = Field(sa_column=Column(BigInteger, primary_key=True))
    value: float
    logged_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


# ---------------------------------------------------------------- requests and answers

ParamValue = str | int | float | bool | None


class RunCreate(BaseModel):
    id: UUID | None = PydanticField(
        default=None, description="chosen by the client, so a retried create is not doubled"
    )
    name: str = PydanticField(min_length=1, max_length=200, pattern=KEY_PATTERN)
    experiment: str = PydanticField(default="default", max_length=200, pattern=KEY_PATTERN)
    params: dict[str, ParamValue] = PydanticField(default_factory=dict, max_length=1000)
    tags: dict[str, str] = PydanticField(default_factory=dict, max_length=100)
    code_version: str | None = PydanticField(default=None, max_length=200)
    model_version: str | None = PydanticField(default=None, max_length=200)
    shared: bool = False

    @field_validator("params")
    @classmethod
    def _keys(cls, params: dict[str, ParamValue]) -> dict[str, ParamValue]:
        for key, value in params.items():
            if not key or len(key) > 200 or not key.isprintable():
                raise ValueError(f"parameter name {key[:40]!r} must be 1-200 printable characters")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"parameter {key!r} is {value}: only finite numbers")
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                # Stored as a JSON number: past 64 bits, PostgreSQL, JavaScript (the runs
                # page) and most clients would read back another number, or none.
                raise ValueError(f"parameter {key!r} is past 64 bits: send it as a string")
        return params


class RunUpdate(BaseModel):
    status: RunStatus | None = None
    notes: str | None = PydanticField(default=None, max_length=100_000)
    shared: bool | None = None
    tags: dict[str, str] | None = PydanticField(default=None, max_length=100)


MetricKey = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=KEY_PATTERN)]
Step = Annotated[int, PydanticField(ge=0, le=2**62)]
Finite = Annotated[float, PydanticField(allow_inf_nan=False)]
LAST_UNIX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a datetime holds
UnixTime = Annotated[float, PydanticField(ge=0, le=LAST_UNIX_TIME)]


def _within_unix_times(moment: datetime) -> datetime:
    """The same range as :data:`UnixTime`. A time near year 1 or 9999 with an offset
    (`0001-01-01T00:00:00+01:00`) parses, then has no unix time or falls outside what a
    datetime holds once in UTC: refused here as a field error, not a 500 on storing."""
    try:
        at = moment.timestamp()
    except (OverflowError, ValueError, OSError):
        at = -1.0
    if not 0 <= at <= LAST_UNIX_TIME:
        raise ValueError("must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
    return moment


class Point(BaseModel):
    key: MetricKey
    step: Step
    value: Finite
    time: Annotated[datetime, AfterValidator(_within_unix_times)] | None = None


class Columns(BaseModel):
    """One metric's points as columns: the compact form (what the tracker sends)."""

    steps: list[Step]
    values: list[Finite]
    times: list[UnixTime] | None = PydanticField(default=None, description="unix seconds")

    @model_validator(mode="after")
    def _same_lengths(self) -> Self:
        if len(self.values) != len(self.steps) or (
            self.times is not None and len(self.times) != len(self.steps)
        ):
            raise ValueError("steps, values and times must have the same length")
        return self


class PointBatch(BaseModel):
    points: list[Point] = PydanticField(default_factory=list)
    series: dict[MetricKey, Columns] = PydanticField(
        default_factory=dict, description="metric -> columns; the same points, compactly"
    )

    def columns(self, now: float) -> "PointColumns":
        """Every point as four columns: metric, step, value, unix time."""
        out = PointColumns([], [], [], [])
        for p in self.points:
            out.keys.append(p.key)
            out.steps.append(p.step)
            out.values.append(p.value)
            out.times.append(p.time.timestamp() if p.time else now)
        for key, columns in self.series.items():
            count = len(columns.steps)
            out.keys.extend([key] * count)
            out.steps.extend(columns.steps)
            out.values.extend(columns.values)
            out.times.extend(columns.times if columns.times is not None else [now] * count)
        return out


@dataclass
class PointColumns:
    keys: list[str]
    steps: list[int]
    values: list[float]
    times: list[float]

    def __len__(self) -> int:
        return len(self.keys)


class IngestResult(BaseModel):
    received: int
    stored: int = PydanticField(description="new points; replayed ones are not stored twice")


class RunRead(BaseModel):
    id: UUID
    project: str
    experiment: str
    name: str
    user: str
    status: RunStatus
    started_at: datetime
    ended_at: datetime | None
    tags: dict[str, str]
    code_version: str | None
    model_version: str | None
    notes: str
    shared: bool
    params: dict[str, Any]
    latest: dict[str, float] = PydanticField(description="each metric's value at its last step")


class Series(BaseModel):
    key: str
    steps: list[int]
    values: list[float]
    total: int = PydanticField(description="points stored; more than returned when downsampled")


class Comparison(BaseModel):
    runs: list[RunRead]
    params: dict[str, dict[str, Any]] = PydanticField(
        description="each parameter's value per run id (absent: not set)"
    )
    differing: list[str] = PydanticField(description="parameters whose values differ")
