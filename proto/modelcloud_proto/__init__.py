"""ModelCloud wire contracts.

Pure data shared between the SDK and the platform services: the model manifest that a
model server publishes at ``GET /meta`` and RFC 9457 problem details. No I/O lives here.
"""

from modelcloud_proto.manifest import CommandSpec, FieldSpec, FieldType, ModelManifest
from modelcloud_proto.problem import FieldError, Problem

__all__ = [
    "CommandSpec",
    "FieldError",
    "FieldSpec",
    "FieldType",
    "ModelManifest",
    "Problem",
]
