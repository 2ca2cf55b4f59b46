"""Resource ids: what counts as an id, and the request ids innera makes."""

from __future__ import annotations

import uuid

import pytest

from innera.ids import canonical_uuid, new_uuid4


def test_new_uuid4_is_a_random_version_4_uuid_in_canonical_form() -> None:
    made = {new_uuid4() for _ in range(1000)}
    assert len(made) == 1000
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text


def test_canonical_uuid_accepts_either_case_and_answers_lower_case() -> None:
    text = str(uuid.uuid4())
    assert canonical_uuid(text) == text
    assert canonical_uuid(text.upper()) == text


@pytest.mark.parametrize("bad", [
    "", "x" * 36, None, 5, "12345678123412341234123456789012",
    "{12345678-1234-1234-1234-1234567890}", "urn:uuid:12345678-1234-1234-1234-123",
    "1234567g-1234-1234-1234-123456789012", "123456781234-1234-1234-123456789012-",
    "12345678-1234-1234-1234-1234567890123", "12345678-1234-1234-1234-12345678901\n",
])
def test_anything_else_is_not_an_id(bad: object) -> None:
    assert canonical_uuid(bad) is None
