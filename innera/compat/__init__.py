"""The one place per library where innera relies on that library's internals.

Each module here (``psycopg``, ``coredis``, ``quart``, ``werkzeug``, ``hypercorn``,
``embedded``) wraps the private names innera needs, states the versions it was written for
(:class:`Supported`, the same range ``pyproject.toml`` pins, with a comment saying why) and is
imported by one module of innera. Its test (``tests/compat/``) fails with a clear message on a
version it was not written for, so a dependency upgrade shows where to look.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version as installed_version


class UnsupportedVersion(RuntimeError):
    """A library's installed version is outside the range its compat module was written for."""


def _release(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


@dataclass(frozen=True)
class Supported:
    """``distribution`` versions in ``[lowest, below)`` and the module that relies on them."""

    distribution: str
    lowest: str
    below: str
    module: str

    def check(self, version: str | None = None) -> str:
        """The installed (or given) version; :class:`UnsupportedVersion` outside the range."""
        found = installed_version(self.distribution) if version is None else version
        if not _release(self.lowest) <= _release(found) < _release(self.below):
            raise UnsupportedVersion(
                f"{self.distribution} {found} is installed, but {self.module} relies on its "
                f"internals as of >={self.lowest},<{self.below}. Review {self.module} against "
                f"{self.distribution} {found}, then widen the range there and in pyproject.toml."
            )
        return found
