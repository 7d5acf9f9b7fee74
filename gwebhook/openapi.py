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

_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_FORBIDDEN = _json(
    {"$ref": "#/components/schemas/Error"},
    "Made with the session without its CSRF token, or from another origin.",
)
_SUMMARY = {
    "type": "object",
    "required": ["id", "name", "type", "occurred", "created", "instance"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "name": _STRING,
        "type": _STRING,
        "occurred": _STRING,
        "created": _STRING,
        "instance": _STRING,
    },
    "additionalProperties": False,
}
_RECENT = {
    "type": "object",
    "required": ["incidents", "next", "older"],
    "properties": {
        "incidents": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Summary"},
        },
        "next": {
            **_STRING,
            "description": (
                "Pass it as `after` to GET /api/v1/incidents to wait for newer ones."
            ),
        },
        "older": {
            **_NULLABLE_STRING,
            "description": (
                "Pass it back as `before` for the next older page; null at the oldest."
            ),
        },
    },
    "additionalProperties": False,
}
_EXPRESSIONS = {"type": "object", "additionalProperties": _STRING}
_INSTANCES = {
    "type": "object",
    "required": ["instances"],
    "properties": {
        "instances": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "incident_type", "store_samples", "map", "fields"],
                "properties": {
                    "name": _STRING,
                    "incident_type": _NULLABLE_STRING,
                    "store_samples": {"type": "boolean"},
                    "map": _EXPRESSIONS,
                    "fields": _EXPRESSIONS,
                },
                "additionalProperties": False,
            },
        }
    },
    "additionalProperties": False,
}
_COUNT = {"type": "integer", "minimum": 0}
_DELIVERIES = {
    "type": "object",
    "required": ["forwards", "deliveries"],
    "properties": {
        "forwards": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "configured", "pending", "dead"],
                "properties": {
                    "name": _STRING,
                    "configured": {"type": "boolean"},
                    "pending": _COUNT,
                    "dead": _COUNT,
                },
                "additionalProperties": False,
            },
        },
        "deliveries": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "forward",
                    "incident",
                    "state",
                    "attempts",
                    "last_error",
                    "next_attempt",
                ],
                "properties": {
                    "forward": _STRING,
                    "incident": {"type": "string", "pattern": "^[0-9]+$"},
                    "state": {"enum": ["pending", "delivered", "dead"]},
                    "attempts": _COUNT,
                    "last_error": _NULLABLE_STRING,
                    "next_attempt": {"type": ["number", "null"]},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_REDELIVER = {
    "type": "object",
    "required": ["forward"],
    "properties": {
        "forward": _STRING,
        "incidents": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1000,
            "items": {"type": "string", "pattern": "^[0-9]+$"},
        },
        "dead": {"const": True},
    },
    "oneOf": [{"required": ["incidents"]}, {"required": ["dead"]}],
    "additionalProperties": False,
}
_QUEUED = {
    "type": "object",
    "required": ["queued"],
    "properties": {"queued": _COUNT},
    "additionalProperties": False,
}
_HEALTH = {
    "type": "object",
    "required": [
        "store",
        "incidents_per_minute",
        "auth_failures",
        "api_auth_failures",
        "sessions",
    ],
    "properties": {
        "store": {
            "type": "object",
            "required": ["status", "database"],
            "properties": {
                "status": {"enum": ["ok", "unavailable"]},
                "database": {"enum": ["sqlite", "postgresql"]},
            },
            "additionalProperties": False,
        },
        "incidents_per_minute": {
            "type": "object",
            "required": ["since", "counts"],
            "description": (
                "The last 60 minutes, oldest first; null while the store is down."
            ),
            "properties": {
                "since": _NULLABLE_STRING,
                "counts": {
                    "type": ["array", "null"],
                    "items": _COUNT,
                    "minItems": 60,
                    "maxItems": 60,
                },
            },
            "additionalProperties": False,
        },
        "auth_failures": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["instance", "reason", "count"],
                "properties": {"instance": _STRING, "reason": _STRING, "count": _COUNT},
                "additionalProperties": False,
            },
        },
        "api_auth_failures": _COUNT,
        "sessions": _COUNT,
    },
    "additionalProperties": False,
}
_PREVIEW_REQUEST = {
    "type": "object",
    "required": ["instance"],
    "properties": {
        "instance": _STRING,
        "map": {
            "type": "object",
            "properties": {"name": _STRING, "type": _STRING, "occurred": _STRING},
            "additionalProperties": False,
        },
        "fields": _EXPRESSIONS,
    },
    "additionalProperties": False,
}
_PREVIEW = {
    "type": "object",
    "required": ["results"],
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "type", "occurred", "fields", "errors"],
                "properties": {
                    "name": _NULLABLE_STRING,
                    "type": _NULLABLE_STRING,
                    "occurred": {**_NULLABLE_STRING, "description": "UTC ISO 8601"},
                    "fields": {"type": "object"},
                    "errors": {
                        "type": "object",
                        "description": (
                            "Keyed name, type, occurred or fields.<key>: what "
                            "ingest would refuse, or an expression that does "
                            "not compile."
                        ),
                        "additionalProperties": _STRING,
                    },
                },
                "additionalProperties": False,
            },
        }
    },
    "additionalProperties": False,
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "gwebhook read API",
        "version": "1",
        "description": (
            "The incidents gwebhook stored. Every path needs "
            "`Authorization: Bearer <API token>`, or the console's session "
            "cookie; a POST made with the session also needs its CSRF token "
            "in `X-CSRF-Token`."
        ),
    },
    "security": [{"token": []}, {"session": []}],
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
        "/api/v1/incidents/{id}/body": {
            "get": {
                "summary": "The exact body of the incident's request, as received",
                "parameters": [_ID],
                "responses": {
                    "200": {
                        "description": (
                            "The bytes as received (a gzip body still gzip: "
                            "X-Gwebhook-Content-Encoding says so)."
                        ),
                        "content": {
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": ("application/octet-stream"),
                                }
                            }
                        },
                    },
                    "400": _BAD,
                    "404": _json(
                        {"$ref": "#/components/schemas/Error"}, "No such incident."
                    ),
                    **_ERRORS,
                },
            }
        },
        "/api/v1/recent": {
            "get": {
                "summary": "Incident summaries, newest first, a page at a time",
                "parameters": [
                    _query(
                        "before",
                        _STRING,
                        "A page's `older`; left out, from the newest.",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "At most this many (default 50).",
                    ),
                    _INSTANCE,
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Recent"}, "A page."),
                    "400": _BAD,
                    **_ERRORS,
                },
            }
        },
        "/api/v1/instances": {
            "get": {
                "summary": "The instances in service, with their mappings",
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/Instances"}, "The instances."
                    ),
                    "400": _BAD,
                    **_ERRORS,
                },
            }
        },
        "/api/v1/deliveries": {
            "get": {
                "summary": "The forwards' queues, and their deliveries",
                "parameters": [
                    _query("forward", _STRING, "Only this forward's deliveries."),
                    _query(
                        "state",
                        {"enum": ["pending", "delivered", "dead"]},
                        "Only deliveries in this state.",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "At most this many deliveries (default 100).",
                    ),
                ],
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/Deliveries"}, "The queues."
                    ),
                    "400": _BAD,
                    **_ERRORS,
                },
            }
        },
        "/api/v1/deliveries/redeliver": {
            "post": {
                "summary": "Queue a forward's deliveries again",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _REDELIVER}},
                },
                "responses": {
                    "200": _json(_QUEUED, "How many were queued again."),
                    "400": _BAD,
                    "403": _FORBIDDEN,
                    "404": _json(
                        {"$ref": "#/components/schemas/Error"},
                        "No forward of that name is configured.",
                    ),
                    **_ERRORS,
                },
            }
        },
        "/api/v1/health": {
            "get": {
                "summary": "The store's status, incidents per minute, auth failures",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Health"}, "Health."),
                    "400": _BAD,
                    **_ERRORS,
                },
            }
        },
        "/api/v1/mapping/preview": {
            "post": {
                "summary": "A mapping over an instance's samples, as ingest would map",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/PreviewRequest"}
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/Preview"},
                        "One result per sample, oldest first.",
                    ),
                    "400": _BAD,
                    "403": _FORBIDDEN,
                    "404": _json(
                        {"$ref": "#/components/schemas/Error"}, "No such instance."
                    ),
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
        "securitySchemes": {
            "token": {"type": "http", "scheme": "bearer"},
            "session": {
                "type": "apiKey",
                "in": "cookie",
                "name": "__Host-gwebhook-session",
                "description": (
                    "The console's session (POST /console/login); a POST made "
                    "with it also sends the session's CSRF token as X-CSRF-Token."
                ),
            },
        },
        "schemas": {
            "Incident": _INCIDENT,
            "Page": _PAGE,
            "Error": _ERROR,
            "Summary": _SUMMARY,
            "Recent": _RECENT,
            "Instances": _INSTANCES,
            "Deliveries": _DELIVERIES,
            "Health": _HEALTH,
            "PreviewRequest": _PREVIEW_REQUEST,
            "Preview": _PREVIEW,
        },
    },
}
