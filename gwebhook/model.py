"""The values that move between the request path and the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IncidentDraft:
    """One incident read from a payload, not yet stored."""

    name: str
    type: str
    occurred: str
    details: dict[str, Any]


@dataclass(frozen=True)
class ReceivedRequest:
    """What is kept of the HTTP request that carried incidents."""

    received: str
    client: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class StoredIncident:
    """An incident as committed to the store: what the sender is answered."""

    id: str
    name: str
    type: str
    occurred: str
    created: str

    def summary(self) -> dict[str, str]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "occurred": self.occurred,
            "created": self.created,
        }
