"""The SDK's version, reported in every model's manifest."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelcloud")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
