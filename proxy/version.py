"""The installed package's version, for ``--version`` and the build-info metric."""

from __future__ import annotations

import platform
from importlib import metadata

DISTRIBUTION = "llm-throttle"


def package_version() -> str:
    """The version pip installed (pyproject.toml's); ``unknown`` when run from a bare tree."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def python_version() -> str:
    return platform.python_version()
