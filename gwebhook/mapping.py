"""
An instance's mapping: JMESPath expressions that read an incident's name,
type, occurred and extra fields out of each element a sender posts (pure,
no I/O).

Precedence, for ``name``, ``type`` and ``occurred``: an expression's non-null
result wins over the element's own field, which wins over the default.  An
expression that fails on an element (a function given null, a type error)
gives null, as does one whose result JSON cannot hold, so a mapping never
turns a valid element into an error by itself; only a result of the wrong
kind (a number for ``name``) does, and that answer names the instance.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath import visitor
from jmespath.functions import Functions
from jmespath.parser import ParsedResult

MAP_KEYS = ("name", "type", "occurred")

# Field names end up as keys of the incident's ``fields`` object, in the
# console and in whatever a forward sends on: the same modest alphabet as
# instance names keeps them printable and safe everywhere.
FIELD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# The characters TOML allows in a bare key; any other key is written quoted.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dotted(*keys: str) -> str:
    """A key's path as TOML writes it: ``fields."a b"``, ``map.name``."""
    return ".".join(k if _BARE_KEY.fullmatch(k) else _quoted(k) for k in keys)


def _quoted(key: str) -> str:
    # Escapes keep a message on one line whatever the key holds.
    out = []
    for c in key:
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        elif ord(c) > 0xFFFF:
            out.append(f"\\U{ord(c):08x}")
        else:
            out.append(f"\\u{ord(c):04x}")
    return '"' + "".join(out) + '"'


# ParsedResult.search builds an interpreter (and its function table) per call,
# which is most of the cost of a simple expression; the interpreter holds no
# state between searches, so one serves every search in every thread.
_INTERPRETER = visitor.TreeInterpreter()


class MappingError(ValueError):
    """An expression or key of a mapping that cannot be used."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class Mapped(NamedTuple):
    """
    What a mapping read from one element; None means "not supplied".
    ``fields`` holds only the expressions that gave a value.
    """

    name: Any
    type: Any
    occurred: Any
    fields: dict[str, Any]


@dataclass(frozen=True)
class Mapping:
    """
    Compiled ``[instance.map]`` and ``[instance.fields]`` expressions.  Two
    mappings are equal when their expressions are written the same.
    """

    map: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, str], ...]
    _map: dict[str, ParsedResult] = field(compare=False, repr=False)
    _fields: tuple[tuple[str, ParsedResult], ...] = field(compare=False, repr=False)

    def apply(self, element: dict[str, Any]) -> Mapped:
        """Search every expression over ``element``, the object as sent."""
        found = {
            key: _search(expression, element) for key, expression in self._map.items()
        }
        values = {}
        for key, expression in self._fields:
            value = _search(expression, element)
            if value is not None:
                values[key] = value
        return Mapped(
            found.get("name"), found.get("type"), found.get("occurred"), values
        )


def compile_mapping(map: dict[str, str], fields: dict[str, str]) -> Mapping:
    """
    Compile every expression once.  Raises MappingError naming the key
    (``map.name``, ``fields.severity``) for an unknown map key, a field name
    outside ``[A-Za-z0-9_.-]{1,64}``, or an expression that is not valid
    JMESPath, calls an unknown function or gives one the wrong number of
    arguments (errors JMESPath itself would only raise while searching).
    """
    compiled_map = {}
    for key, source in map.items():
        if key not in MAP_KEYS:
            raise MappingError(
                dotted("map", key),
                "unknown key; [instance.map] takes name, type, occurred",
            )
        compiled_map[key] = _compile(dotted("map", key), source)
    compiled_fields = []
    for key, source in fields.items():
        if not isinstance(key, str) or not FIELD_NAME.fullmatch(key):
            raise MappingError(
                dotted("fields", str(key)),
                "not a valid field name; use 1 to 64 letters, digits, '_', '.' or '-'",
            )
        compiled_fields.append((key, _compile(dotted("fields", str(key)), source)))
    return Mapping(
        tuple(map.items()), tuple(fields.items()), compiled_map, tuple(compiled_fields)
    )


def json_kind(value: Any) -> str:
    """How to name ``value``'s JSON type in a message: "a number", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a value JSON cannot hold"


def _compile(key: str, source: Any) -> ParsedResult:
    if not isinstance(source, str):
        raise MappingError(
            key, f"must be a string (a JMESPath expression), got {json_kind(source)}"
        )
    try:
        expression = jmespath.compile(source)
    except jmespath_errors.EmptyExpressionError:
        raise MappingError(
            key, "empty expression; give a JMESPath expression or leave the key out"
        ) from None
    except jmespath_errors.JMESPathError as e:
        raise MappingError(
            key,
            f"{source!r} is not a valid JMESPath expression: {_describe(e)}; "
            "see jmespath.org for the syntax",
        ) from None
    except RecursionError:
        raise MappingError(
            key, f"{source[:40]!r}... is nested too deeply to compile"
        ) from None
    problem = _function_problem(expression.parsed)
    if problem is not None:
        raise MappingError(
            key, f"{source!r}: {problem}; see jmespath.org for the functions"
        )
    return expression


def _describe(error: jmespath_errors.JMESPathError) -> str:
    """jmespath's message on one line (its own draws a caret under the text)."""
    if isinstance(error, jmespath_errors.LexerError):
        return f"{error.message} at character {error.lexer_position + 1}"
    if isinstance(error, jmespath_errors.IncompleteExpressionError):
        return "the expression ends too early"
    if isinstance(error, jmespath_errors.ParseError):
        return f"{error.msg} at character {error.lex_position + 1}"
    return str(error).splitlines()[0]


def _function_problem(node: Any) -> str | None:
    """
    An unknown function or a call with the wrong number of arguments
    anywhere in a parsed expression: JMESPath finds these only while
    searching, where they would silently count as null on every element.
    """
    if not isinstance(node, dict):
        return None
    if node.get("type") == "function_expression":
        name, arguments = node["value"], node["children"]
        spec = Functions.FUNCTION_TABLE.get(name)
        if spec is None:
            return f"unknown function {name}()"
        signature = spec["signature"]
        if signature and signature[-1].get("variadic"):
            if len(arguments) < len(signature):
                return str(
                    jmespath_errors.VariadictArityError(
                        len(signature), len(arguments), name
                    )
                )
        elif len(arguments) != len(signature):
            return str(jmespath_errors.ArityError(len(signature), len(arguments), name))
    for child in node.get("children", ()):
        problem = _function_problem(child)
        if problem is not None:
            return problem
    return None


def _search(expression: ParsedResult, element: dict[str, Any]) -> Any:
    try:
        value = _INTERPRETER.visit(expression.parsed, element)
    except Exception:
        # The expression is the operator's and the element the sender's:
        # whatever goes wrong between them (a function given null, a float
        # ceil() cannot take, a number too long for int()) means "no value",
        # never a failed request.
        return None
    return value if _json_safe(value) else None


def _json_safe(value: Any) -> bool:
    """
    Whether JSON can hold a result.  ``to_number('1e999')`` gives infinity
    and ``&expr`` a function object: stored, either would break the store's
    JSON or a reader's.
    """
    if value is None or isinstance(value, (str, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, dict)):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return False
        return True
    return False
