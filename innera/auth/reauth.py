"""Re-authentication tokens: proof that the user typed their password again moments ago,
required by sensitive operations (change e-mail or password, delete the account).

``issue`` returns an opaque token (256 random bits, base64url) and stores
``reauth:{sha256(token)}`` → ``{userId}:{session generation}`` with a TTL (300 s).
``consume`` is single use and bound to the user and the generation: a token presented for
another user returns ``False`` and stays valid for its owner, and a token issued before the
user's sessions ended (password change, sign-out everywhere: the generation went up) is dead.
Redis being unreachable raises :class:`~innera.errors.RedisUnavailable`.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from innera.redis import Redis

__all__ = ["ReauthTokens"]

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")

# KEYS[1] = reauth:{hash}; ARGV[1] = "{user id}:{generation}". Deletes only when the token is
# the user's, of that generation.
_CONSUME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class ReauthTokens:
    def __init__(self, redis: Redis, ttl_s: int = 300) -> None:
        if ttl_s < 1:
            raise ValueError("ttl_s must be positive")
        self._redis = redis
        self.ttl_s = ttl_s
        self._consume = redis.client.register_script(_CONSUME)

    @staticmethod
    def key(token: str) -> str:
        return "reauth:" + hashlib.sha256(token.encode("ascii")).hexdigest()

    async def issue(self, user_id: str, generation: int = 0) -> str:
        token = secrets.token_urlsafe(32)
        with self._redis.unavailable_as_503():
            await self._redis.client.set(self.key(token), f"{user_id}:{generation}",
                                         ex=self.ttl_s)
        return token

    async def consume(self, user_id: str, token: str | None, generation: int = 0) -> bool:
        """``True`` once for a live token issued to ``user_id`` in session generation
        ``generation``; ``False`` otherwise."""
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            return False
        with self._redis.unavailable_as_503():
            consumed = await self._consume(keys=[self.key(token)],
                                           args=[f"{user_id}:{generation}"])
        return consumed == 1
