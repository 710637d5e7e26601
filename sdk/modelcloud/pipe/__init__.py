"""Model files, git-style: push and pull a model version's files to a central store.

``from modelcloud.pipe import ModelFile, list_profiles, APILocal`` (the seed's
``from bolt4ds.pipe import ...`` works too). See :mod:`modelcloud.pipe._pipe` for the tour.
"""

from modelcloud.pipe._pipe import APILocal, FilePipe, ModelFile, default_center, list_profiles
from modelcloud.pipe.errors import PipeError, PipeFileNotFound, UnsafePath

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
