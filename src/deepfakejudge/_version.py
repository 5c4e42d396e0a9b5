"""The package version, from one source: `version` in pyproject.toml.

An installed package (`pip install`, editable too) reads it from its metadata; a source tree put on
`sys.path` without installing reads pyproject.toml beside `src/`. This module imports nothing of the
package, so any module can take the version without importing the package's `__init__`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

UNKNOWN = "0+unknown"


def _from_pyproject() -> str:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        import tomllib

        return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    except (ImportError, OSError, KeyError, ValueError):  # tomllib is Python 3.11+
        return UNKNOWN


try:
    __version__ = version("deepfakejudge")
except PackageNotFoundError:
    __version__ = _from_pyproject()
