"""The values that move between the request path and the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class IncidentDraft(NamedTuple):
    """
    One incident read from a payload, not yet stored.  ``details`` are the
    incident's as sent, without a ``headers`` key: that key is the request's
    headers, kept once with the request (docs/reference.md 2.4, 4.3).
    ``fields`` are the extra incident fields the instance's mapping gave
    (``{}`` when none).  A tuple because an array of incidents makes one per
    element.
    """

    name: str
    type: str
    occurred: str
    details: dict[str, Any]
    fields: dict[str, Any]


@dataclass(frozen=True)
class ReceivedRequest:
    """
    What is kept of the HTTP request that carried incidents: ``instance`` is
    the name of the instance it was for, ``client_cert`` the certificate the
    client presented (``{"subject": RFC 4514, "sha256": hex}``), or None.
    """

    received: str
    client: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    instance: str
    client_cert: dict[str, str] | None
    # The X-Request-Id it was answered with (its access line's id=), so that
    # ``show`` can say which request an incident came from.
    x_request_id: str | None = None


class StoredIncident(NamedTuple):
    """
    An incident as committed to the store: what the sender is answered.  A
    tuple because the store makes one per incident it commits.
    """

    id: str
    name: str
    type: str
    occurred: str
    created: str
    # True when this request created nothing for the element: it is an
    # earlier incident, answered again (docs/reference.md 8.12).
    duplicate: bool = False

    def summary(self) -> dict[str, str | bool]:
        """The incident as the answer lists it (docs/reference.md 2.5)."""
        summary: dict[str, str | bool] = {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "occurred": self.occurred,
            "created": self.created,
        }
        if self.duplicate:
            summary["duplicate"] = True
        return summary


class Committed(NamedTuple):
    """
    What the store says of a request once its transaction committed: the
    answer's incidents, new or duplicates, and, when the request repeated
    an earlier one's idempotency key, that request's X-Request-Id (``""``
    when it had none) — the request was answered again, nothing stored.
    """

    incidents: list[StoredIncident]
    replay_of: str | None = None

    @property
    def duplicates(self) -> int:
        """How many of the answer's incidents were not created by this request."""
        return sum(s.duplicate for s in self.incidents)
