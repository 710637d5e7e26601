"""``bolt4ds.pipe``: the same objects as :mod:`modelcloud.pipe`, under the seed's name."""

from modelcloud.pipe import (
    APILocal,
    FilePipe,
    ModelFile,
    PipeError,
    PipeFileNotFound,
    UnsafePath,
    default_center,
    list_profiles,
)

__all__ = [
    "APILocal",
    "FilePipe",
    "ModelFile",
    "PipeError",
    "PipeFileNotFound",
    "UnsafePath",
    "default_center",
    "list_profiles",
]
