"""
The mapping workbench's preview (``POST /api/v1/mapping/preview``,
docs/reference.md 11): an instance's samples, each as its sender sent it,
put through the mapping code ingest runs (``gwebhook.mapping`` compiles and
searches, ``gwebhook.payload.resolve`` chooses and checks), so a preview is
exactly what ingest would store.  Pure: the caller reads the samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gwebhook.mapping import MAP_KEYS, Mapped, MappingError, compile_mapping
from gwebhook.payload import PayloadError, resolve

_KEYS = ("instance", "map", "fields")
# A preview has no request time: an ``occurred`` nothing supplies stays null.
_NO_TIME = "no request time"


class PreviewError(ValueError):
    """A preview request that cannot be read: 400, naming what is wrong."""


@dataclass(frozen=True)
class PreviewRequest:
    instance: str
    map: dict[str, str]
    fields: dict[str, str]


def read_request(body: bytes) -> PreviewRequest:
    """The request body's instance and expressions; PreviewError names a bad part."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PreviewError(
            'body: not JSON; send {"instance": NAME, "map": {...}, "fields": {...}}'
        ) from None
    if not isinstance(document, dict):
        raise PreviewError("body: not a JSON object")
    for key in document:
        if key not in _KEYS:
            raise PreviewError(
                f"{str(key)[:64]!r}: unknown key; the body takes instance, map, fields"
            )
    instance = document.get("instance")
    if not isinstance(instance, str) or not instance:
        raise PreviewError("instance: give the name of an instance, a string")
    expressions = {}
    for table in ("map", "fields"):
        given = document.get(table, {})
        if not isinstance(given, dict):
            raise PreviewError(f"{table}: must be an object of JMESPath expressions")
        for key, source in given.items():
            if table == "map" and key not in MAP_KEYS:
                raise PreviewError(
                    f"map.{key[:64]}: unknown key; map takes name, type, occurred"
                )
            if not isinstance(source, str):
                raise PreviewError(
                    f"{table}.{key[:64]}: must be a string (a JMESPath expression)"
                )
        expressions[table] = given
    return PreviewRequest(instance, expressions["map"], expressions["fields"])


def compile_each(
    map: dict[str, str], fields: dict[str, str]
) -> tuple[Any, dict[str, str]]:
    """
    The mapping of every expression that compiles, and the errors of those
    that do not, keyed ``name``, ``type``, ``occurred`` or ``fields.<key>``.
    """
    errors: dict[str, str] = {}
    good_map: dict[str, str] = {}
    good_fields: dict[str, str] = {}
    for key, source in map.items():
        try:
            compile_mapping({key: source}, {})
        except MappingError as e:
            errors[key] = e.message
        else:
            good_map[key] = source
    for key, source in fields.items():
        try:
            compile_mapping({}, {key: source})
        except MappingError as e:
            errors[f"fields.{key}"] = e.message
        else:
            good_fields[key] = source
    return compile_mapping(good_map, good_fields), errors


def preview(
    elements: list[dict[str, Any]],
    instance: str,
    default_type: str,
    map: dict[str, str],
    fields: dict[str, str],
) -> list[dict[str, Any]]:
    """
    One result per element, in order: ``name``, ``type``, ``occurred`` as
    ingest would store them (``occurred`` None where nothing supplies it),
    ``fields``, and ``errors`` keyed by field.  An expression that does not
    compile is an error of every result; one that fails on an element counts
    as null there, as at ingest.
    """
    mapping, compile_errors = compile_each(map, fields)
    return [
        _one(element, mapping, instance, default_type, compile_errors)
        for element in elements
    ]


def _one(
    element: Any,
    mapping: Any,
    instance: str,
    default_type: str,
    compile_errors: dict[str, str],
) -> dict[str, Any]:
    errors = dict(compile_errors)
    if not isinstance(element, dict):
        # A sample is an element ingest took, so an object; kept safe anyway.
        errors["name"] = "the sample is not a JSON object"
        return _result(None, None, None, {}, errors)
    mapped = mapping.apply(element)
    # Ingest checks the three in one go and stops at the first problem; the
    # preview asks the same function for each alone, so every field that
    # fails says so.  The others are left out of the element and the mapping.
    values: dict[str, Any] = {}
    for key in MAP_KEYS:
        alone = Mapped(
            mapped.name if key == "name" else None,
            mapped.type if key == "type" else None,
            mapped.occurred if key == "occurred" else None,
            {},
        )
        others = {k: v for k, v in element.items() if k == key or k not in MAP_KEYS}
        try:
            resolved = resolve(others, alone, None, instance, default_type, _NO_TIME)
        except PayloadError as e:
            errors.setdefault(key, str(e))
            values[key] = None
            continue
        value = resolved[MAP_KEYS.index(key)]
        values[key] = None if key == "occurred" and value is _NO_TIME else value
    return _result(
        values["name"], values["type"], values["occurred"], mapped.fields, errors
    )


def _result(
    name: Any, kind: Any, occurred: Any, fields: dict[str, Any], errors: dict
) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "occurred": occurred,
        "fields": fields,
        "errors": errors,
    }
