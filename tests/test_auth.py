"""Identity: bearer tokens that are refused, what anonymous viewers and customers may do,
and the `ticketing token` command."""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import RESERVE, cancel_event, mutation
from tests.helpers import (
    JWT_SECRET,
    ORGANIZER,
    auth,
    data,
    gql,
    insert_event,
    make_settings,
    snapshot,
)
from ticketing import auth as auth_module
from ticketing import cli
from ticketing.app import create_app
from ticketing.settings import get_settings

COUNT_EVENTS = "{ events { totalCount } }"
MY_RESERVATIONS = "{ myReservations { totalCount } }"
OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256-9876543210"
MISSING = object()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for alice, with some replaced (or removed, given MISSING)."""
    now = datetime.now(UTC)
    made: dict[str, Any] = {
        "sub": "alice",
        "roles": [],
        "iat": now,
        "exp": now + timedelta(hours=1),
    }
    for name, value in overrides.items():
        if value is MISSING:
            made.pop(name, None)
        else:
            made[name] = value
    return made


def hours_from_now(hours: float) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


def sign(payload: dict[str, Any], secret: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # HS512 with the (HS256-sized) test secret warns about the key length.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(payload, secret, algorithm=algorithm)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def tampered_token() -> str:
    """A validly signed customer token whose payload was then edited to grant `organizer`."""
    header, payload, signature = sign(claims()).split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded["roles"] = ["organizer"]
    forged = b64url(json.dumps(decoded, separators=(",", ":")).encode())
    assert forged != payload
    return f"{header}.{forged}.{signature}"


def one_character_changed_token() -> str:
    header, payload, signature = sign(claims()).split(".")
    middle = len(payload) // 2
    changed = payload[:middle] + ("A" if payload[middle] != "A" else "B") + payload[middle + 1 :]
    return f"{header}.{changed}.{signature}"


def bearer(token: str) -> str:
    return f"Bearer {token}"


BAD_AUTHORIZATION = [
    pytest.param(bearer(sign(claims(exp=datetime.now(UTC) - timedelta(minutes=5)))), id="expired"),
    pytest.param(bearer(tampered_token()), id="payload-tampered"),
    pytest.param(bearer(one_character_changed_token()), id="one-payload-character-changed"),
    pytest.param(bearer(sign(claims(), secret=OTHER_SECRET)), id="other-secret"),
    pytest.param(bearer(sign(claims(), algorithm="HS512")), id="other-algorithm-hs512"),
    pytest.param(bearer(jwt.encode(claims(), key="", algorithm="none")), id="alg-none"),
    pytest.param(
        bearer(jwt.encode(claims(roles=["organizer"]), key="", algorithm="none")),
        id="alg-none-organizer",
    ),
    pytest.param(bearer(sign(claims(exp=MISSING))), id="missing-exp"),
    pytest.param(bearer(sign(claims(sub=MISSING))), id="missing-sub"),
    pytest.param(bearer(sign(claims(iat=MISSING))), id="missing-iat"),
    pytest.param(bearer(sign(claims(iat="soon"))), id="non-numeric-iat"),
    pytest.param(bearer(sign(claims(iat=hours_from_now(1)))), id="issued-in-the-future"),
    pytest.param(
        bearer(sign(claims(iat=hours_from_now(-1), exp=hours_from_now(24)))), id="lives-25h"
    ),
    pytest.param(bearer(sign(claims(iat="0"))), id="issued-in-1970-as-a-string"),
    pytest.param(bearer(sign(claims(aud="ticketing"))), id="audience-none-is-set-for"),
    pytest.param(bearer(sign(claims(sub=None))), id="null-sub"),
    pytest.param(bearer(sign(claims(sub=42))), id="integer-sub"),
    pytest.param(bearer(sign(claims(sub=["alice"]))), id="list-sub"),
    pytest.param(bearer(sign(claims(sub=""))), id="empty-sub"),
    pytest.param(bearer(sign(claims(sub="   "))), id="blank-sub"),
    pytest.param(bearer(sign(claims(roles="organizer"))), id="roles-string"),
    pytest.param(bearer(sign(claims(roles={"organizer": True}))), id="roles-object"),
    pytest.param(bearer(sign(claims(roles=["organizer", 1]))), id="roles-non-string-item"),
    pytest.param(
        bearer(sign(claims(nbf=datetime.now(UTC) + timedelta(hours=1)))), id="not-yet-valid"
    ),
    pytest.param(f"Basic {base64.b64encode(b'alice:secret').decode()}", id="basic-scheme"),
    pytest.param("Basic xyz", id="basic-xyz"),
    pytest.param(f"Token {sign(claims())}", id="token-scheme"),
    pytest.param(sign(claims()), id="no-scheme"),
    pytest.param("Bearer", id="bearer-without-token"),
    pytest.param("Bearer garbage", id="garbage"),
    pytest.param("Bearer a.b.c", id="garbage-three-parts"),
]


@pytest.fixture
def settings_cache() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# --- Refused credentials ----------------------------------------------------------------------


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION)
def test_bad_credentials_are_refused_even_for_anonymous_queries(
    client: TestClient, engine: Engine, authorization: str
) -> None:
    insert_event(engine)
    response = client.post(
        "/graphql", json={"query": COUNT_EVENTS}, headers={"Authorization": authorization}
    )
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert "data" not in body
    [error] = body["errors"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert error["message"]


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION[:3])
def test_bad_credentials_are_refused_over_get(client: TestClient, authorization: str) -> None:
    response = client.get(
        "/graphql", params={"query": COUNT_EVENTS}, headers={"Authorization": authorization}
    )
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_bad_credentials_on_a_mutation_change_nothing(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    before = snapshot(engine)
    forged = tampered_token()
    body = gql(
        client,
        cancel_event("__typename"),
        {"id": event_id},
        headers={"Authorization": bearer(forged)},
        expect_status=401,
    )
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert snapshot(engine) == before


# --- Accepted credentials (controls for the refusals above) -----------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(bearer(sign(claims())), id="crafted-like-the-refused-ones"),
        pytest.param(bearer(sign(claims(roles=MISSING))), id="without-roles"),
        pytest.param(f"bearer {sign(claims())}", id="lower-case-scheme"),
        pytest.param(f"BEARER {sign(claims())}", id="upper-case-scheme"),
        # An issuer whose clock runs a few seconds ahead of ours.
        pytest.param(
            bearer(sign(claims(iat=hours_from_now(10 / 3600), exp=hours_from_now(1)))),
            id="issued-10s-ahead-of-our-clock",
        ),
    ],
)
def test_valid_token_identifies_the_customer(client: TestClient, authorization: str) -> None:
    result = data(client, MY_RESERVATIONS, headers={"Authorization": authorization})
    assert result == {"myReservations": {"totalCount": 0}}


def test_token_identifies_whose_reservations_are_listed(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    for quantity in (1, 2):
        done = data(
            client,
            RESERVE,
            {"input": {"eventId": event_id, "quantity": quantity}},
            headers={"Authorization": bearer(sign(claims(sub="bob")))},
        )
        assert done == {"createReservation": {"__typename": "ReservationPayload"}}
    query = "{ myReservations { totalCount edges { node { customer quantity } } } }"
    bobs = data(client, query, headers=auth("bob"))["myReservations"]
    assert bobs["totalCount"] == 2
    assert sorted((e["node"]["customer"], e["node"]["quantity"]) for e in bobs["edges"]) == [
        ("bob", 1),
        ("bob", 2),
    ]
    assert data(client, query, headers=auth("carol"))["myReservations"]["totalCount"] == 0


# --- Anonymous viewers ------------------------------------------------------------------------


def test_no_token_is_fine_for_events(client: TestClient, engine: Engine) -> None:
    insert_event(engine)
    response = client.post("/graphql", json={"query": COUNT_EVENTS})
    assert "authorization" not in response.request.headers
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"events": {"totalCount": 1}}}


def test_my_reservations_without_token_is_401_unauthenticated(client: TestClient) -> None:
    body = gql(client, MY_RESERVATIONS, expect_status=401)
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert error["path"] == ["myReservations"]


def test_401_for_a_missing_token_carries_a_bearer_challenge(client: TestClient) -> None:
    """RFC 9110 §15.5.2: a 401 response MUST send WWW-Authenticate with a challenge."""
    response = client.post("/graphql", json={"query": MY_RESERVATIONS})
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate", "").startswith("Bearer")


# --- Customers may not run events -------------------------------------------------------------

CREATE_EVENT = mutation("createEvent", "__typename")
UPDATE_EVENT = mutation("updateEvent", "__typename")
CANCEL_EVENT = mutation("cancelEvent", "__typename")


def event_mutation(name: str, event_id: str) -> tuple[str, dict[str, Any]]:
    """A minimal, otherwise valid request for one of the organizer-only mutations."""
    if name == "createEvent":
        starts_at = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        new = {"name": "Gala", "venue": "Opera", "startsAt": starts_at, "capacity": 50}
        return CREATE_EVENT, {"input": new}
    if name == "updateEvent":
        return UPDATE_EVENT, {"input": {"eventId": event_id, "name": "Renamed", "capacity": 99}}
    return CANCEL_EVENT, {"input": {"eventId": event_id}}


EVENT_MUTATIONS = ["createEvent", "updateEvent", "cancelEvent"]


NON_ORGANIZERS = {
    "customer": (auth("alice"), 200, "FORBIDDEN"),
    "lookalike roles": (
        {
            "Authorization": bearer(
                sign(claims(roles=["Admin", "Organizer", "organizers", "administrator"]))
            )
        },
        200,
        "FORBIDDEN",
    ),
    "anonymous": ({}, 401, "UNAUTHENTICATED"),
}


@pytest.mark.parametrize("who", NON_ORGANIZERS)
@pytest.mark.parametrize("mutation", EVENT_MUTATIONS)
def test_only_organizers_may_run_event_mutations(
    client: TestClient, engine: Engine, mutation: str, who: str
) -> None:
    headers, status, code = NON_ORGANIZERS[who]
    event_id = insert_event(engine)
    query, variables = event_mutation(mutation, event_id)
    before = snapshot(engine)
    body = gql(client, query, variables, headers=headers, expect_status=status)
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == code
    assert error["path"] == [mutation]
    assert snapshot(engine) == before


@pytest.mark.parametrize("mutation", EVENT_MUTATIONS)
def test_organizer_may_run_the_same_event_mutations(
    client: TestClient, engine: Engine, mutation: str
) -> None:
    """The control for the refusals: the very same requests succeed for an organizer."""
    event_id = insert_event(engine)
    query, variables = event_mutation(mutation, event_id)
    before = snapshot(engine)
    result = data(client, query, variables, headers=ORGANIZER)
    assert result == {mutation: {"__typename": "EventPayload"}}
    assert snapshot(engine) != before


# --- The `ticketing token` command ------------------------------------------------------------


@pytest.mark.usefixtures("settings_cache")
def test_token_command_mints_an_organizer_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKETING_JWT_SECRET", JWT_SECRET)
    assert cli.main(["token", "--subject", "zoe", "--organizer"]) == 0
    printed = capsys.readouterr().out.strip()
    decoded = jwt.decode(printed, JWT_SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "zoe"
    assert decoded["roles"] == ["organizer"]
    lifetime = decoded["exp"] - datetime.now(UTC).timestamp()
    assert 23 * 3600 < lifetime <= 24 * 3600


@pytest.mark.usefixtures("settings_cache")
def test_token_command_defaults_to_a_customer_with_the_given_lifetime(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKETING_JWT_SECRET", JWT_SECRET)
    assert cli.main(["token", "--subject", "zoe", "--hours", "2"]) == 0
    printed = capsys.readouterr().out.strip()
    decoded = jwt.decode(printed, JWT_SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "zoe"
    assert decoded["roles"] == []
    assert decoded["exp"] - decoded["iat"] == 2 * 3600
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(printed, OTHER_SECRET, algorithms=["HS256"])


@pytest.mark.usefixtures("settings_cache")
def test_token_from_the_command_lets_an_organizer_create_an_event(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKETING_JWT_SECRET", JWT_SECRET)
    assert cli.main(["token", "--subject", "zoe", "--organizer"]) == 0
    printed = capsys.readouterr().out.strip()
    query, variables = event_mutation("createEvent", "")
    query = query.replace("{ __typename }", "{ ... on EventPayload { event { name } } }")
    result = data(client, query, variables, headers={"Authorization": bearer(printed)})
    assert result == {"createEvent": {"event": {"name": "Gala"}}}
    assert data(client, COUNT_EVENTS) == {"events": {"totalCount": 1}}


# --- Issuer, audience and lifetime --------------------------------------------------------------

ISSUER, AUDIENCE = "https://id.example.com", "ticketing-api"


@pytest.fixture
def strict_client(database_url: str, engine: Engine) -> Iterator[TestClient]:
    """A service that wants its own issuer and audience, and tokens of at most an hour."""
    settings = make_settings(
        database_url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_max_lifetime_s=3600
    )
    with TestClient(create_app(settings)) as made:
        yield made


def strict_claims(**overrides: Any) -> dict[str, Any]:
    return claims(**{"iss": ISSUER, "aud": AUDIENCE, **overrides})


def sign_unchecked(payload: dict[str, Any]) -> str:
    """Signed as given: PyJWT's encode refuses some malformed claims (an `iss` list)."""
    numeric = {
        name: int(value.timestamp()) if isinstance(value, datetime) else value
        for name, value in payload.items()
    }
    return jwt.PyJWS().encode(json.dumps(numeric).encode(), JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(claims(), id="no-iss-no-aud"),
        pytest.param(strict_claims(iss=MISSING), id="missing-iss"),
        pytest.param(strict_claims(aud=MISSING), id="missing-aud"),
        pytest.param(strict_claims(iss="https://id.example.org"), id="other-iss"),
        pytest.param(strict_claims(aud="other-api"), id="other-aud"),
        pytest.param(strict_claims(aud=["other-api"]), id="other-aud-list"),
        pytest.param(strict_claims(iss=[ISSUER]), id="iss-as-list"),
        pytest.param(strict_claims(exp=hours_from_now(1.5)), id="lives-90-minutes"),
        pytest.param(strict_claims(iat=MISSING), id="missing-iat"),
    ],
)
def test_tokens_must_match_the_configured_issuer_audience_and_lifetime(
    strict_client: TestClient, payload: dict[str, Any]
) -> None:
    body = gql(
        strict_client,
        COUNT_EVENTS,
        headers={"Authorization": bearer(sign_unchecked(payload))},
        expect_status=401,
    )
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(strict_claims(), id="iss-and-aud"),
        pytest.param(strict_claims(aud=["other-api", AUDIENCE]), id="aud-list-naming-us"),
        pytest.param(strict_claims(exp=hours_from_now(0.99)), id="lives-just-under-an-hour"),
    ],
)
def test_tokens_matching_issuer_audience_and_lifetime_are_accepted(
    strict_client: TestClient, payload: dict[str, Any]
) -> None:
    result = data(strict_client, MY_RESERVATIONS, headers={"Authorization": bearer(sign(payload))})
    assert result == {"myReservations": {"totalCount": 0}}


def test_the_lifetime_refusal_names_the_maximum(client: TestClient) -> None:
    too_long = sign(claims(exp=hours_from_now(24.1)))
    body = gql(client, COUNT_EVENTS, headers={"Authorization": bearer(too_long)}, expect_status=401)
    assert "86400 seconds" in body["errors"][0]["message"]
    exactly_a_day = sign(claims(iat=hours_from_now(-1), exp=hours_from_now(23)))
    assert data(client, COUNT_EVENTS, headers={"Authorization": bearer(exactly_a_day)})


@pytest.mark.usefixtures("settings_cache")
def test_token_command_mints_tokens_with_the_configured_issuer_and_audience(
    strict_client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in (
        ("SECRET", JWT_SECRET),
        ("ISSUER", ISSUER),
        ("AUDIENCE", AUDIENCE),
        ("MAX_LIFETIME_S", "3600"),
    ):
        monkeypatch.setenv(f"TICKETING_JWT_{name}", value)
    assert cli.main(["token", "--subject", "zoe", "--hours", "1"]) == 0
    printed = capsys.readouterr().out.strip()
    decoded = jwt.decode(printed, JWT_SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert (decoded["iss"], decoded["aud"]) == (ISSUER, AUDIENCE)
    result = data(strict_client, MY_RESERVATIONS, headers={"Authorization": bearer(printed)})
    assert result == {"myReservations": {"totalCount": 0}}


@pytest.mark.usefixtures("settings_cache")
@pytest.mark.parametrize("hours", ["24.01", "0", "-1"])
def test_token_command_refuses_lifetimes_the_service_would_refuse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], hours: str
) -> None:
    monkeypatch.setenv("TICKETING_JWT_SECRET", JWT_SECRET)
    assert cli.main(["token", "--subject", "zoe", "--hours", hours]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert "at most 24" in printed.err


def verified_rules() -> auth_module.TokenRules:
    return auth_module.TokenRules(secret=JWT_SECRET, max_lifetime=timedelta(hours=24))


def test_a_token_is_verified_once_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = verified_rules()
    decoded: list[str] = []
    decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    header = auth("alice")["Authorization"]
    first = auth_module.authenticate(header, rules)
    assert auth_module.authenticate(header, rules) == first
    assert first is not None
    assert first.customer_id == "alice"
    assert len(decoded) == 1


def test_a_verified_token_is_refused_once_it_expires() -> None:
    rules = verified_rules()
    skew = auth_module.CLOCK_SKEW.total_seconds()
    # Valid for about a second more, the tolerated clock skew included.
    expires = int(time.time() - skew) + 2
    claims = {"sub": "alice", "iat": expires - 600, "exp": expires}
    header = "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    assert auth_module.authenticate(header, rules) is not None
    while time.time() - skew <= expires:
        time.sleep(0.1)
    with pytest.raises(auth_module.AuthenticationError, match="expired"):
        auth_module.authenticate(header, rules)


def test_refused_tokens_are_not_kept() -> None:
    rules = verified_rules()
    header = "Bearer " + jwt.encode(
        {"sub": "alice", "iat": datetime.now(UTC), "exp": datetime.now(UTC) + timedelta(hours=1)},
        "another secret of a decent length, 32 bytes or more",
        algorithm="HS256",
    )
    for _ in range(2):
        with pytest.raises(auth_module.AuthenticationError, match="invalid"):
            auth_module.authenticate(header, rules)
