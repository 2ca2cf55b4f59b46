"""A fresh clone of the repository has everything the suite reads.

``tests/fixtures/repository.py`` makes any read outside the repository fail during the whole
suite. Here a fresh ``git clone`` of the committed tree runs the tests that read the
repository's own files (Compose and monitoring configuration, the README's configuration
table, the architecture contract): a file they need but git does not track fails them here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.repository import ROOT

#: the test modules that read files of the repository rather than talking to services
READS_REPOSITORY = ["tests/test_compose.py", "tests/test_monitoring_config.py",
                    "tests/test_config.py", "tests/test_architecture.py"]


def test_reading_beside_the_repository_fails() -> None:
    sibling = ROOT.parent / "shared-by-nobody" / "schema.json"
    with pytest.raises(PermissionError, match="only files inside the repository"):
        sibling.read_text()
    with pytest.raises(PermissionError, match="only files inside the repository"):
        os.listdir(ROOT.parent / "shared-by-nobody")


def test_a_fresh_clone_passes_the_tests_that_read_the_repository(tmp_path: Path) -> None:
    git = shutil.which("git")
    assert git, "git is needed to clone the repository"
    if not (ROOT / ".git").exists():
        pytest.fail(f"{ROOT} is not a git checkout; the suite runs from a clone")
    clone = tmp_path / "clone"
    subprocess.run([git, "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
                   check=True, timeout=120)
    env = {**os.environ, "PYTHONPATH": str(clone)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         *READS_REPOSITORY],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout
