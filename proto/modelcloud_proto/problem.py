"""RFC 9457 problem details, as every ModelCloud HTTP endpoint returns them on error."""

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:modelcloud:problem:"


class FieldError(BaseModel):
    """What is wrong with one field of a request, named the way the caller sent it."""

    field: str = Field(description="Dotted path of the offending field, e.g. `photo` or `tags.2`.")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document; ``errors`` lists field-level causes when there are any."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", description="URI naming the kind of problem.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] = Field(default_factory=list)
