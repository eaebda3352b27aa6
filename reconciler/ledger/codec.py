"""How Python values become ledger column values and back.

Owns: the text form of times (ISO-8601 UTC, microseconds always present so text order
is time order), the JSON columns, and turning rows into the model's typed records.
Must not: touch the database; every function here is pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from pathlib import PurePath
from typing import Any

from reconciler.model import GenerationRecord, GenerationState, InstanceRecord


def encode_time(at: datetime) -> str:
    """`2026-11-29T09:41:02.123456+00:00`; naive datetimes are refused, not guessed."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"ledger times must be timezone-aware, got naive {at!r}")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def decode_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    # Rows written by hand (or a rebuild) may lack an offset; the ledger only holds UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return encode_time(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a ledger JSON column")


def encode_json(value: Mapping[str, Any] | Sequence[Any] | None) -> str | None:
    if value is None:
        return None
    document = list(value) if isinstance(value, Sequence) else dict(value)
    # sort_keys: identical details are identical text, which keeps diffs and tests stable.
    return json.dumps(document, sort_keys=True, default=_json_default)


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def generation_record(row: Mapping[str, Any]) -> GenerationRecord:
    return GenerationRecord(
        env=row["env"],
        service=row["service"],
        number=row["number"],
        fingerprint=row["fingerprint"],
        image=row["image"],
        size=row["size"],
        count=row["count"],
        state=GenerationState(row["state"]),
        created_at=decode_time(row["created_at"]),
        activated_at=decode_time(row["activated_at"]),
        retired_at=decode_time(row["retired_at"]),
        image_id=row["image_id"],
        reason=row["reason"],
        state_since=decode_time(row.get("state_since")),
        retried=bool(row.get("retried")),
    )


def instance_record(row: Mapping[str, Any]) -> InstanceRecord:
    return InstanceRecord(
        id=row["id"],
        provider=row["provider"],
        env=row["env"],
        service=row["service"],
        generation=row["generation"],
        slot=row["slot"],
        state=row["state"],
        created_at=decode_time(row["created_at"]),
    )
