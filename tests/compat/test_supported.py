"""The version guard every compat module uses: a version outside the range it was written for
is refused with a message naming the library, the version and the module to review."""

import pytest

from innera.compat import Supported, UnsupportedVersion

GUARD = Supported("psycopg", "3.3.9", "3.4", "innera/compat/psycopg.py")


@pytest.mark.parametrize("version", ["3.3.9", "3.3.12", "3.3.10.dev1"])
def test_versions_inside_the_range_pass(version: str) -> None:
    assert GUARD.check(version) == version


@pytest.mark.parametrize("version", ["3.4.0", "3.2.1", "4.0", "3.3.8"])
def test_versions_outside_the_range_are_refused_with_a_clear_message(version: str) -> None:
    with pytest.raises(UnsupportedVersion) as caught:
        GUARD.check(version)
    message = str(caught.value)
    assert f"psycopg {version} is installed" in message
    assert ">=3.3.9,<3.4" in message
    assert "innera/compat/psycopg.py" in message
