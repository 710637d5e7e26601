"""Errors of the model-file pipe; each names the file it is about.

PipeError            base class
├── PipeFileNotFound  a file is not in the center (or not on the local side)
└── UnsafePath        a name that would leave its folder (``..``, absolute, a drive, NUL,
                      ``\\``, a symbolic link on the way)
"""


class PipeError(Exception):
    """A pipe operation failed; ``filename`` says which file when there is one."""

    def __init__(self, message: str, filename: str | None = None) -> None:
        super().__init__(message)
        self.filename = filename


class PipeFileNotFound(PipeError, FileNotFoundError):
    pass


class UnsafePath(PipeError, ValueError):
    pass
