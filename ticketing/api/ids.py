"""Opaque global IDs (Relay): base64url of "Type:key"."""

from __future__ import annotations

import base64
import binascii

import strawberry

MAX_KEY = 2**63 - 1  # the bigint primary keys


def to_global_id(type_name: str, key: int) -> strawberry.ID:
    raw = f"{type_name}:{key}".encode()
    return strawberry.ID(base64.urlsafe_b64encode(raw).decode().rstrip("="))


def parse_global_id(global_id: str) -> tuple[str, int] | None:
    """The type name and key, or None for anything malformed."""
    try:
        padded = global_id + "=" * (-len(global_id) % 4)
        type_name, _, key = base64.urlsafe_b64decode(padded.encode("ascii")).decode().partition(":")
    except (UnicodeError, binascii.Error, ValueError):
        return None
    if not (key.isascii() and key.isdigit() and 0 < int(key) <= MAX_KEY):
        return None
    # Only the canonical spelling: one ID per object (no padding, signs or leading zeros).
    if to_global_id(type_name, int(key)) != global_id:
        return None
    return type_name, int(key)


def key_of(global_id: str, type_name: str) -> int | None:
    """The key of an ID of the expected type, else None."""
    parsed = parse_global_id(global_id)
    if parsed is None or parsed[0] != type_name:
        return None
    return parsed[1]
