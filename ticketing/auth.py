"""Bearer tokens: HS256 JWTs whose `sub` is the customer and whose `roles` may grant
`organizer` (creates events and manages their own), `admin` (manages every event) or
`checkout` (a payment backend: confirms holds)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from ticketing.domain.actors import Actor
from ticketing.settings import Settings

ALGORITHM = "HS256"
ORGANIZER_ROLE = "organizer"
ADMIN_ROLE = "admin"
CHECKOUT_ROLE = "checkout"
MAX_SUBJECT_LENGTH = 255  # customer ids are stored and indexed
# Tolerated difference between the issuer's clock and ours, for `iat` and `exp`: an external
# issuer whose clock runs a little ahead must not have its fresh tokens refused.
CLOCK_SKEW = timedelta(seconds=30)
# Tokens whose checks passed, kept per worker: a signed-in client sends its token with every
# request, and verifying it (HMAC, JSON, the claims' rules) took about 4% of a request's CPU.
VERIFIED_TOKENS_KEPT = 10_000


class AuthenticationError(Exception):
    """The request carried credentials that can't be trusted; it is refused, never downgraded
    to anonymous."""


class LifetimeTooLong(jwt.InvalidTokenError):
    """The token's `exp` lies further from its `iat` than the maximum lifetime allows."""


@dataclass(frozen=True)
class TokenRules:
    """What a token must satisfy besides its signature: `exp`, `sub` and `iat`, a lifetime
    (`exp - iat`) within the maximum, and the `iss` and `aud` set, if any."""

    secret: str
    max_lifetime: timedelta
    issuer: str | None = None
    audience: str | None = None
    # The actor of each token verified lately, with the token's `exp`: what a token says
    # stays true, except that it expires.
    _verified: OrderedDict[str, tuple[Actor, int]] = field(
        default_factory=OrderedDict, compare=False, repr=False
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenRules:
        return cls(
            secret=settings.jwt_secret.get_secret_value(),
            max_lifetime=timedelta(seconds=settings.jwt_max_lifetime_s),
            issuer=settings.jwt_issuer or None,
            audience=settings.jwt_audience or None,
        )

    def verified_claims(self, token: str) -> dict[str, Any]:
        """The token's claims; a jwt.InvalidTokenError when any rule is broken."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self.secret,
            algorithms=[ALGORITHM],
            issuer=self.issuer,
            audience=self.audience,
            leeway=CLOCK_SKEW,
            options={"require": ["exp", "iat", "sub"]},
        )
        # PyJWT has checked that both convert to integers.
        if int(claims["exp"]) - int(claims["iat"]) > self.max_lifetime.total_seconds():
            raise LifetimeTooLong(
                f"The token's lifetime (exp - iat) exceeds the maximum of "
                f"{self.max_lifetime.total_seconds():g} seconds."
            )
        return claims

    def actor(self, token: str) -> Actor:
        """The actor a token stands for; an AuthenticationError if it can't be trusted."""
        kept = self._verified.get(token)
        if kept is None:
            actor, expires = _actor_of(token, self)
            self._verified[token] = (actor, expires)
            if len(self._verified) > VERIFIED_TOKENS_KEPT:
                self._verified.popitem(last=False)
            return actor
        actor, expires = kept
        # PyJWT's own test of `exp`; the other time-bound claims (`iat`, `nbf`) that held
        # once hold for ever after.
        if expires <= time.time() - CLOCK_SKEW.total_seconds():
            del self._verified[token]
            raise AuthenticationError("The token has expired.")
        self._verified.move_to_end(token)
        return actor


def authenticate(authorization: str | None, rules: TokenRules) -> Actor | None:
    """The actor behind an `Authorization` header value; None when there is no header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("The Authorization header must be 'Bearer <token>'.")
    return rules.actor(token)


def _actor_of(token: str, rules: TokenRules) -> tuple[Actor, int]:
    """The token's actor and its `exp`, checked by every rule."""
    try:
        claims = rules.verified_claims(token)
    except jwt.ExpiredSignatureError as error:
        raise AuthenticationError("The token has expired.") from error
    except LifetimeTooLong as error:
        raise AuthenticationError(str(error)) from error
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
    actor = Actor(
        customer_id=subject,
        is_organizer=ORGANIZER_ROLE in roles,
        is_admin=ADMIN_ROLE in roles,
        is_checkout=CHECKOUT_ROLE in roles,
    )
    return actor, int(claims["exp"])


def _is_customer_id(subject: object) -> bool:
    return (
        isinstance(subject, str)
        and 0 < len(subject) <= MAX_SUBJECT_LENGTH
        and subject.strip() == subject
        and subject.isprintable()
    )


def mint_token(
    secret: str,
    subject: str,
    *,
    roles: list[str] | None = None,
    ttl: timedelta,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    now = datetime.now(UTC)
    claims = {"sub": subject, "roles": roles or [], "iat": now, "exp": now + ttl}
    claims |= {name: value for name, value in (("iss", issuer), ("aud", audience)) if value}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
