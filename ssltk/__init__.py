"""ssltk: self-supervised learning toolkit for brain MRI."""

from importlib.metadata import PackageNotFoundError, version

from ssltk.hookspecs import hookimpl

try:
    __version__ = version("ssltk")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "hookimpl"]
