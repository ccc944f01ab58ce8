"""Bearer tokens: HS256 JWTs whose `sub` is the customer and whose `roles` may grant
`organizer` (creates events and manages their own) or `admin` (manages every event)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

from ticketing.domain.booking import Actor

ALGORITHM = "HS256"
ORGANIZER_ROLE = "organizer"
ADMIN_ROLE = "admin"
MAX_SUBJECT_LENGTH = 255  # customer ids are stored and indexed


class AuthenticationError(Exception):
    """The request carried credentials that can't be trusted; it is refused, never downgraded
    to anonymous."""


def authenticate(authorization: str | None, secret: str) -> Actor | None:
    """The actor behind an `Authorization` header value; None when there is no header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("The Authorization header must be 'Bearer <token>'.")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError as error:
        raise AuthenticationError("The token has expired.") from error
    except jwt.InvalidTokenError as error:
        raise AuthenticationError("The token is invalid.") from error
    subject, roles = claims["sub"], claims.get("roles", [])
    if not _is_customer_id(subject):
        raise AuthenticationError(
            f"The token's subject must be a printable string of 1 to {MAX_SUBJECT_LENGTH} "
            "characters."
        )
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise AuthenticationError("The token's roles must be a list of strings.")
    return Actor(
        customer_id=subject, is_organizer=ORGANIZER_ROLE in roles, is_admin=ADMIN_ROLE in roles
    )


def _is_customer_id(subject: object) -> bool:
    return (
        isinstance(subject, str)
        and 0 < len(subject) <= MAX_SUBJECT_LENGTH
        and subject.strip() == subject
        and subject.isprintable()
    )


def mint_token(secret: str, subject: str, *, roles: list[str] | None = None, ttl: timedelta) -> str:
    now = datetime.now(UTC)
    claims = {"sub": subject, "roles": roles or [], "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
