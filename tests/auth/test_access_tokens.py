"""Access tokens (HS256 JWT) and the generated JWT secret."""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
import uuid
from pathlib import Path

import jwt
import pytest

from innera.auth.access_tokens import AccessTokens, load_jwt_secret, load_jwt_secret_async
from innera.config import load_settings
from innera.errors import Unauthorized

SECRET = "s" * 64
USER = str(uuid.uuid4())


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": USER, "iat": now, "exp": now + 900,
                               "jti": uuid.uuid4().hex, "typ": "access"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_issue_and_verify() -> None:
    tokens = AccessTokens(SECRET, 900)
    token, expires_in = tokens.issue(USER)
    assert expires_in == 900
    assert tokens.verify(token) == USER
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"sub", "iat", "exp", "jti", "typ", "sg"}
    assert payload["typ"] == "access"
    assert payload["exp"] - payload["iat"] == 900
    assert payload["jti"] != jwt.decode(tokens.issue(USER)[0],
                                        options={"verify_signature": False})["jti"]


def test_expired_with_small_leeway() -> None:
    tokens = AccessTokens(SECRET, 900)
    now = int(time.time())
    almost = jwt.encode(claims(iat=now - 900, exp=now - 2), SECRET, algorithm="HS256")
    assert tokens.verify(almost) == USER  # within the 5 s leeway
    expired = jwt.encode(claims(iat=now - 900, exp=now - 30), SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="expired") as failure:
        tokens.verify(expired)
    assert (failure.value.status, failure.value.code) == (401, "unauthorized")


def test_a_token_verified_before_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified tokens are remembered (no second signature check), until their ``exp``."""
    tokens = AccessTokens(SECRET, 900)
    now = int(time.time())
    token = jwt.encode(claims(iat=now, exp=now + 10), SECRET, algorithm="HS256")
    assert tokens.verify(token) == USER
    assert tokens.verify(token) == USER
    later = time.time() + 10 + 6  # past exp and the 5 s leeway
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(token)
    assert token not in tokens._verified


def test_remembered_tokens_are_bounded_and_forgeries_are_not_among_them() -> None:
    tokens = AccessTokens(SECRET, 900, cache_size=3)
    issued = [tokens.issue(str(uuid.uuid4())) for _ in range(5)]
    for token, _ in issued:
        tokens.verify(token)
    assert len(tokens._verified) == 3
    token = issued[-1][0]
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(Unauthorized):
        tokens.verify(forged)
    # the first token dropped out and verifies again from its signature
    assert tokens.verify(issued[0][0]) == jwt.decode(
        issued[0][0], options={"verify_signature": False})["sub"]


def test_tampered_token() -> None:
    tokens = AccessTokens(SECRET, 900)
    token, _ = tokens.issue(USER)
    header, payload, signature = token.split(".")
    other = base64.urlsafe_b64encode(
        jwt.api_jws.json.dumps(claims(sub=str(uuid.uuid4()))).encode()).decode().rstrip("=")
    for forged in (f"{header}.{other}.{signature}",
                   f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
                   f"{header}.{payload}."):
        with pytest.raises(Unauthorized):
            tokens.verify(forged)


def test_wrong_secret_and_algorithm() -> None:
    tokens = AccessTokens(SECRET, 900)
    with pytest.raises(Unauthorized):
        tokens.verify(AccessTokens("x" * 64, 900).issue(USER)[0])
    with pytest.raises(Unauthorized):
        tokens.verify(jwt.encode(claims(), SECRET, algorithm="HS512"))
    unsigned = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(Unauthorized):
        tokens.verify(unsigned)


@pytest.mark.parametrize("bad", [
    claims(typ="refresh"), claims(typ=None), claims(sub=None), claims(jti=None),
    claims(exp=None), claims(iat=int(time.time()) + 3600),
])
def test_wrong_type_or_missing_claims(bad: dict[str, object]) -> None:
    with pytest.raises(Unauthorized):
        AccessTokens(SECRET, 900).verify(jwt.encode(bad, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("garbage", [None, "", "abc", "a.b.c", "Bearer x.y.z"])
def test_missing_or_malformed(garbage: str | None) -> None:
    with pytest.raises(Unauthorized):
        AccessTokens(SECRET, 900).verify(garbage)


# --- the secret ----------------------------------------------------------------------


def settings_for(tmp_path: Path, **env: str) -> tuple[str | None, Path, bool]:
    """What :func:`load_jwt_secret` is given: JWT_SECRET, the data dir, production."""
    settings = load_settings({"INNERA_DATA_DIR": str(tmp_path), **env})
    return settings.auth.jwt_secret, settings.server.data_dir, settings.production


async def test_generated_secret_is_persisted_with_0600(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    secret = await load_jwt_secret_async(*settings)
    path = tmp_path / "secrets" / "jwt_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(base64.urlsafe_b64decode(secret + "==")) == 48
    assert path.read_text().strip() == secret
    assert load_jwt_secret(*settings) == secret  # reused
    assert [p.name for p in path.parent.iterdir()] == ["jwt_secret"]  # no temp files left
    # Tokens signed before a restart stay valid after it.
    token, _ = AccessTokens(secret, 900).issue(USER)
    assert AccessTokens(load_jwt_secret(*settings), 900).verify(token) == USER


def test_configured_secret_wins(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, JWT_SECRET="c" * 40)
    assert load_jwt_secret(*settings) == "c" * 40
    assert not (tmp_path / "secrets").exists()


def test_no_generated_secret_in_production(tmp_path: Path) -> None:
    jwt_secret, data_dir, _ = settings_for(tmp_path)
    with pytest.raises(RuntimeError, match="JWT_SECRET"):
        load_jwt_secret(jwt_secret, data_dir, True)
    assert not (tmp_path / "secrets").exists()


def test_concurrent_first_starts_agree(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def start() -> None:
        barrier.wait()
        results.append(load_jwt_secret(*settings))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(results) == 8 and len(set(results)) == 1


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    secret = load_jwt_secret(*settings)
    path = tmp_path / "secrets" / "jwt_secret"
    os.chmod(path, 0o644)
    assert load_jwt_secret(*settings) == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
