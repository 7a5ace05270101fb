"""JWT verification and minting. Pure functions: the time is passed in.

The algorithm is pinned by configuration: a token signed with any other algorithm,
or with ``alg: none``, is refused.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Iterable

import jwt

from chathub.config import HubConfig
from chathub.core.hub import Claims

ALLOWED_ROLES = frozenset({"admin", "moderator"})


class AuthError(Exception):
    """The token was refused; the message is safe to show the client (no secrets)."""


def generate_secret() -> str:
    return secrets.token_urlsafe(32)


def _verification_key(cfg: HubConfig) -> str:
    if cfg.jwt_algorithm.startswith("HS"):
        assert cfg.jwt_secret is not None
        return cfg.jwt_secret
    key = cfg.jwt_public_key or ""
    if "-----BEGIN" not in key:
        with open(key, encoding="ascii") as fh:
            key = fh.read()
    return key


def verify_token(token: str, cfg: HubConfig, now: float | None = None) -> Claims:
    """Verify ``token`` with the configured key and algorithm and return its claims."""
    if not isinstance(token, str) or not token:
        raise AuthError("missing token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise AuthError("malformed token") from None
    if header.get("alg") != cfg.jwt_algorithm:
        raise AuthError(f"token algorithm must be {cfg.jwt_algorithm}")
    options: dict[str, Any] = {"require": ["exp", "sub"] if cfg.jwt_require_exp else ["sub"], "verify_sub": False}
    try:
        payload = jwt.decode(
            token,
            _verification_key(cfg),
            algorithms=[cfg.jwt_algorithm],
            options=options,  # type: ignore[arg-type]  # pyjwt's Options TypedDict
            leeway=0,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.MissingRequiredClaimError as e:
        raise AuthError(f"token lacks the '{e.claim}' claim") from None
    except jwt.InvalidTokenError:
        raise AuthError("invalid token") from None
    if now is not None and "exp" in payload and isinstance(payload["exp"], (int, float)) and payload["exp"] <= now:
        raise AuthError("token expired")
    return claims_from_payload(payload)


def claims_from_payload(payload: dict[str, Any]) -> Claims:
    sub = payload.get("sub")
    if isinstance(sub, str) and sub.isdigit() and len(sub) <= 19:
        sub = int(sub)
    if not isinstance(sub, int) or isinstance(sub, bool) or not (0 <= sub < 2**63):
        raise AuthError("'sub' must be a user id (integer or string of digits)")
    tid = payload.get("tid", 0)
    if isinstance(tid, str) and tid.isdigit() and len(tid) <= 19:
        tid = int(tid)
    if not isinstance(tid, int) or isinstance(tid, bool) or not (0 <= tid < 2**63):
        raise AuthError("'tid' must be a tenant id (integer)")
    name = payload.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 128):
        raise AuthError("'name' must be a string of at most 128 characters")
    roles = payload.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthError("'roles' must be a list of strings")
    exp = payload.get("exp")
    return Claims(
        user_id=sub,
        tenant_id=tid,
        name=name,
        roles=tuple(r for r in roles if r in ALLOWED_ROLES),
        exp=int(exp) if isinstance(exp, (int, float)) else None,
    )


def mint_token(
    secret: str,
    user_id: int,
    tenant_id: int = 0,
    *,
    ttl_s: int = 24 * 3600,
    name: str | None = None,
    roles: Iterable[str] = (),
    algorithm: str = "HS256",
    now: float | None = None,
) -> str:
    """Sign a token for ``user_id`` (HS* with ``secret``, or RS256/ES256 with a private key)."""
    now = time.time() if now is None else now
    payload: dict[str, Any] = {"sub": str(user_id), "tid": tenant_id, "iat": int(now), "exp": int(now + ttl_s)}
    if name:
        payload["name"] = name
    roles = list(roles)
    if roles:
        payload["roles"] = roles
    return jwt.encode(payload, secret, algorithm=algorithm)
