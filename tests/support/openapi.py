"""The read API's OpenAPI document, and real answers held against it."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from support.http import Response


def pointer(*parts: str) -> str:
    """A JSON pointer of ``parts``, each escaped (``~0``, ``~1``)."""
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class Document:
    """The served document, and validators of its response schemas."""

    URI = "urn:gwebhook:read-api"

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry = Registry().with_resource(
            self.URI, Resource(contents=document, specification=DRAFT202012)
        )

    def schema_of(
        self, path: str, status: int, method: str = "get"
    ) -> Draft202012Validator:
        responses = self.document["paths"][path][method]["responses"]
        assert str(status) in responses, f"{path} does not document {status}"
        where = pointer("paths", path, method, "responses", str(status))
        where += "/content/" + pointer("application/json", "schema")
        return Draft202012Validator(
            {"$ref": f"{self.URI}#/{where}"}, registry=self.registry
        )

    def check(self, path: str, reply: Response, method: str = "get") -> None:
        """``reply`` is what the document says ``path`` answers with its status."""
        assert reply.headers["content-type"] == "application/json"
        self.schema_of(path, reply.status, method).validate(reply.json())
