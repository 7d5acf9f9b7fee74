"""
The read API's OpenAPI 3.1 document (``GET /api/v1/openapi.json``): exactly
what ``gwebhook.api`` serves.  Its schemas are JSON Schema 2020-12, as
OpenAPI 3.1 has them; the tests validate real answers against them.
"""

from __future__ import annotations

from typing import Any

_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": _STRING},
    "additionalProperties": False,
}

_INCIDENT = {
    "type": "object",
    "description": "One incident as gwebhook stored it (what `gwebhook show` prints).",
    "required": [
        "id",
        "name",
        "type",
        "occurred",
        "created",
        "instance",
        "fields",
        "rawJson",
        "request",
    ],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "name": _STRING,
        "type": _STRING,
        "occurred": {**_STRING, "description": "ISO 8601, UTC"},
        "created": {**_STRING, "description": "ISO 8601, UTC: when it was committed"},
        "instance": _STRING,
        "fields": {"type": "object"},
        "rawJson": {
            "type": "object",
            "description": "The element's details, with the request's headers.",
            "required": ["headers"],
            "properties": {"headers": {"type": "object"}},
        },
        "request": {
            "type": "object",
            "required": ["id", "received", "client", "method", "path"],
            "properties": {
                "id": {
                    **_NULLABLE_STRING,
                    "description": "The X-Request-Id the request was answered with.",
                },
                "received": _STRING,
                "client": _STRING,
                "method": {"enum": ["POST", "PUT"]},
                "path": _STRING,
                "client_cert": {
                    "type": "object",
                    "required": ["subject", "sha256"],
                    "properties": {"subject": _STRING, "sha256": _STRING},
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

_PAGE = {
    "type": "object",
    "required": ["incidents", "next"],
    "properties": {
        "incidents": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Incident"},
        },
        "next": {
            **_STRING,
            "description": "Pass it back as `after` to continue where this page ended.",
        },
    },
    "additionalProperties": False,
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


_ERRORS = {
    "401": _json(
        {"$ref": "#/components/schemas/Error"}, "No API token, or a wrong one."
    ),
    "429": _json(
        {"$ref": "#/components/schemas/Error"},
        "Too many failed authentications from this client; see Retry-After.",
    ),
    "503": _json(
        {"$ref": "#/components/schemas/Error"},
        "The store cannot answer now; see Retry-After.",
    ),
}
_BAD = _json({"$ref": "#/components/schemas/Error"}, "A parameter named in the error.")


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_INSTANCE = _query("instance", _STRING, "Only this instance's.")

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "gwebhook read API",
        "version": "1",
        "description": (
            "The incidents gwebhook stored. Every path needs "
            "`Authorization: Bearer <API token>`."
        ),
    },
    "security": [{"token": []}],
    "paths": {
        "/api/v1/incidents": {
            "get": {
                "summary": "Incidents in commit order, a page at a time",
                "parameters": [
                    _query(
                        "after",
                        _STRING,
                        "A page's `next`; left out, from the beginning.",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "At most this many (default 100).",
                    ),
                    _INSTANCE,
                    _query(
                        "wait",
                        {"type": "number", "minimum": 0, "maximum": 60},
                        "Seconds to hold an empty page open for the next incident.",
                    ),
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Page"}, "A page."),
                    "400": _BAD,
                    **_ERRORS,
                },
            }
        },
        "/api/v1/incidents/{id}": {
            "get": {
                "summary": "One incident",
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    }
                ],
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/Incident"}, "The incident."
                    ),
                    "400": _BAD,
                    "404": _json(
                        {"$ref": "#/components/schemas/Error"}, "No such incident."
                    ),
                    **_ERRORS,
                },
            }
        },
        "/api/v1/samples": {
            "get": {
                "summary": "The kept samples, oldest first",
                "parameters": [_INSTANCE],
                "responses": {
                    "200": _json(
                        {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Incident"},
                        },
                        "The samples.",
                    ),
                    "400": _BAD,
                    **_ERRORS,
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": _json({"type": "object"}, "OpenAPI 3.1."),
                    "400": _BAD,
                    **_ERRORS,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Incident": _INCIDENT, "Page": _PAGE, "Error": _ERROR},
    },
}
