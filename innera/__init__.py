"""innera: the backend server of Innera, a journaling app whose entries are encrypted at rest."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("innera")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"
