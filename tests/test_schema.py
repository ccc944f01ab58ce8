"""The committed schema matches the code, and everything in it is described."""

from __future__ import annotations

import json

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLUnionType,
)

from tests.helpers import ROOT
from ticketing.api.schema import build_schema
from ticketing.cli import main

schema = build_schema()


def test_committed_schema_matches_the_code(tmp_path: object) -> None:
    committed = (ROOT / "schema.graphql").read_text(encoding="utf-8")
    assert committed == schema.as_str() + "\n", (
        "schema.graphql is stale: run `ticketing export-schema` (or `make schema`)"
    )


def test_export_schema_command_writes_the_sdl(tmp_path: object, capsys: object) -> None:
    from pathlib import Path

    target = Path(str(tmp_path)) / "out.graphql"
    assert main(["export-schema", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == schema.as_str() + "\n"


def test_export_schema_possible_types_lists_every_union_and_interface_member(
    tmp_path: object,
) -> None:
    from pathlib import Path

    target = Path(str(tmp_path)) / "possible-types.json"
    assert main(["export-schema", "--possible-types", str(target)]) == 0
    possible = json.loads(target.read_text(encoding="utf-8"))["possibleTypes"]
    core = schema._schema
    abstract = [
        name
        for name, graphql_type in core.type_map.items()
        if isinstance(graphql_type, GraphQLUnionType | GraphQLInterfaceType)
        and not name.startswith("__")
    ]
    assert sorted(possible) == sorted(abstract)
    assert possible["Node"] == ["Event", "Reservation", "WaitlistEntry"]
    assert "NotEnoughTickets" in possible["Error"]
    assert "ReservationPayload" not in possible["Error"]
    union = core.type_map["CreateReservationResult"]
    assert isinstance(union, GraphQLUnionType)
    assert possible["CreateReservationResult"] == sorted(member.name for member in union.types)


def test_every_type_field_argument_and_enum_value_is_described() -> None:
    missing: list[str] = []
    for name, graphql_type in schema._schema.type_map.items():
        if name.startswith("__") or name in {"String", "Int", "Boolean", "ID", "Float"}:
            continue
        if not graphql_type.description:
            missing.append(name)
        if isinstance(graphql_type, GraphQLObjectType | GraphQLInterfaceType):
            for field_name, field in graphql_type.fields.items():
                if not field.description:
                    missing.append(f"{name}.{field_name}")
                missing += [
                    f"{name}.{field_name}({arg})"
                    for arg, argument in field.args.items()
                    if not argument.description
                ]
        elif isinstance(graphql_type, GraphQLInputObjectType):
            missing += [
                f"{name}.{field_name}"
                for field_name, field in graphql_type.fields.items()
                if not field.description
            ]
        elif isinstance(graphql_type, GraphQLEnumType):
            missing += [
                f"{name}.{value}"
                for value, spec in graphql_type.values.items()
                if not spec.description
            ]
    assert missing == []


def test_relay_and_error_conventions() -> None:
    type_map = schema._schema.type_map
    node = type_map["Node"]
    assert isinstance(node, GraphQLInterfaceType)
    query = type_map["Query"]
    assert isinstance(query, GraphQLObjectType)
    assert str(query.fields["node"].type) == "Node"  # nullable
    for connection in ("EventConnection", "ReservationConnection"):
        fields = type_map[connection].fields  # type: ignore[union-attr]
        assert {"edges", "pageInfo", "totalCount"} <= set(fields)
    error = type_map["Error"]
    for union_name in (
        "CreateReservationResult",
        "UpdateReservationResult",
        "CancelReservationResult",
        "CreateEventResult",
        "UpdateEventResult",
        "CancelEventResult",
    ):
        union = type_map[union_name]
        assert isinstance(union, GraphQLUnionType)
        payload, *errors = union.types
        assert payload.name.endswith("Payload")
        assert errors
        assert all(error in member.interfaces for member in errors)
