"""An instance's mapping: JMESPath over each element, and the precedence rules."""

from __future__ import annotations

import json

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwebhook.mapping import (
    Mapped,
    MappingError,
    compile_mapping,
    dotted,
)
from gwebhook.payload import DEFAULT_NAME, PayloadError, resolve

RECEIVED = "2024-05-01T12:00:00Z"

WALLARM = {
    "name": "title",
    "type": "join(' ', ['Wallarm', object_type])",
    "occurred": "create_time",
}


def refused(map_=None, fields=None) -> str:
    with pytest.raises(MappingError) as caught:
        compile_mapping(map_ or {}, fields or {})
    return str(caught.value)


def resolved(element, mapped, index=3, instance="wallarm", default_type="Wallarm"):
    return resolve(element, mapped, index, instance, default_type, RECEIVED)


def resolve_refused(element, mapped, index=3, instance="wallarm") -> str:
    with pytest.raises(PayloadError) as caught:
        resolved(element, mapped, index, instance)
    assert caught.value.status == 400
    return str(caught.value)


def nothing(**values) -> Mapped:
    """A Mapped with only the given values supplied."""
    return Mapped(values.get("name"), values.get("type"), values.get("occurred"), {})


# -- compile_mapping: what is refused ------------------------------------------


def test_unknown_map_key_is_refused():
    """A map key other than name, type and occurred is refused with its path."""
    assert refused({"title": "x"}) == (
        "map.title: unknown key; [instance.map] takes name, type, occurred"
    )


@pytest.mark.parametrize("key", ["", "a b", "x" * 65, "é", "a/b"])
def test_field_name_outside_the_alphabet_is_refused(key):
    """A field name must be 1 to 64 letters, digits, '_', '.' or '-'."""
    assert refused(fields={key: "a"}) == (
        f"{dotted('fields', key)}: not a valid field name; "
        "use 1 to 64 letters, digits, '_', '.' or '-'"
    )


def test_field_names_of_the_whole_alphabet_are_accepted():
    """Letters, digits, '_', '.' and '-' up to 64 characters make a field name."""
    names = ["severity", "a.b-c_D9", "x" * 64]
    mapping = compile_mapping({}, {name: "v" for name in names})
    assert mapping.apply({"v": 1}).fields == dict.fromkeys(names, 1)


def test_expression_that_is_not_a_string_is_refused():
    """An expression must be a string."""
    assert refused({"name": 5}) == (
        "map.name: must be a string (a JMESPath expression), got a number"
    )


def test_empty_expression_is_refused():
    """An empty expression is refused rather than read as "no mapping"."""
    assert refused(fields={"severity": ""}) == (
        "fields.severity: empty expression; give a JMESPath expression or leave "
        "the key out"
    )


def test_syntax_error_is_refused_on_one_line():
    """A syntax error is one line naming the key, the expression and where."""
    assert refused({"name": "foo bar"}) == (
        "map.name: 'foo bar' is not a valid JMESPath expression: Unexpected "
        "token: bar at character 5; see jmespath.org for the syntax"
    )


def test_unclosed_literal_is_refused_on_one_line():
    """An unclosed literal is one line naming the key and where it starts."""
    assert refused({"type": "`{"}) == (
        "map.type: '`{' is not a valid JMESPath expression: Unclosed ` delimiter "
        "at character 1; see jmespath.org for the syntax"
    )


def test_incomplete_expression_is_refused():
    """An expression that stops short is refused."""
    assert refused({"occurred": "a["}) == (
        "map.occurred: 'a[' is not a valid JMESPath expression: the expression "
        "ends too early; see jmespath.org for the syntax"
    )


def test_unknown_function_is_refused_when_compiled():
    """A misspelt function is refused at load, not turned into null on every element."""
    assert refused(fields={"severity": "a || lenght(b)"}) == (
        "fields.severity: 'a || lenght(b)': unknown function lenght(); "
        "see jmespath.org for the functions"
    )


def test_wrong_number_of_arguments_is_refused_when_compiled():
    """A call with the wrong number of arguments, however deep, is refused at load."""
    assert refused({"name": "items[?length(a, b) > `1`].x | [0]"}) == (
        "map.name: 'items[?length(a, b) > `1`].x | [0]': Expected 1 argument for "
        "function length(), received 2; see jmespath.org for the functions"
    )


def test_too_few_arguments_to_a_variadic_function_is_refused():
    """A variadic function called with too few arguments is refused at load."""
    assert refused({"name": "merge()"}) == (
        "map.name: 'merge()': Expected at least 1 argument for function merge(), "
        "received 0; see jmespath.org for the functions"
    )


def test_expression_nested_too_deeply_is_refused():
    """An expression too deep to parse is refused, not a crash."""
    source = "(" * 5000 + "a" + ")" * 5000
    assert refused({"name": source}) == (
        f"map.name: {source[:40]!r}... is nested too deeply to compile"
    )


def test_mappings_written_the_same_are_equal():
    """Two mappings compiled from the same text are equal: a re-read sees no change."""
    assert compile_mapping(WALLARM, {"s": "threat"}) == compile_mapping(
        dict(WALLARM), {"s": "threat"}
    )
    assert compile_mapping(WALLARM, {"s": "threat"}) != compile_mapping(
        WALLARM, {"s": "threat2"}
    )


# -- Mapping.apply ---------------------------------------------------------------


def test_expressions_read_the_element_as_sent():
    """Each expression searches the whole element, not its rawJson."""
    mapping = compile_mapping(
        {"name": "title", "type": "rawJson.kind"}, {"inner": "rawJson.title"}
    )
    mapped = mapping.apply(
        {"title": "outer", "rawJson": {"title": "inner", "kind": "k"}}
    )
    assert mapped == Mapped("outer", "k", None, {"inner": "inner"})


def test_the_wallarm_example_maps_every_key():
    """The documented Wallarm mapping gives name, type, occurred and fields."""
    mapping = compile_mapping(WALLARM, {"severity": "threat"})
    mapped = mapping.apply(
        {
            "title": "SQLi",
            "object_type": "attack",
            "create_time": 1700000000,
            "threat": 80,
        }
    )
    assert mapped == Mapped("SQLi", "Wallarm attack", 1700000000, {"severity": 80})


def test_an_expression_that_fails_counts_as_null():
    """A function given null (a runtime error in JMESPath) gives no value."""
    mapping = compile_mapping(WALLARM, {"n": "length(missing)"})
    assert mapping.apply({"title": "t"}) == Mapped("t", None, None, {})


@pytest.mark.parametrize(
    "source",
    [
        "to_number('1e999')",  # infinity: JSON cannot hold it
        "to_number('nan')",
        "[to_number('1e999')]",
        "ceil(to_number('1e999'))",  # Python's OverflowError, not JMESPath's
        "to_number(big)",  # int() refuses this many digits
        "sort_by(mixed, &@)",
        "&title",  # an expression reference is not a value
    ],
)
def test_a_result_json_cannot_hold_counts_as_null(source):
    """A result or failure outside JMESPath's own errors still gives no value."""
    mapping = compile_mapping({"name": source}, {"f": source})
    element = {"title": "t", "big": "1" * 5000, "mixed": [1, "a"]}
    assert mapping.apply(element) == Mapped(None, None, None, {})


def test_fields_leave_out_nulls_and_keep_other_false_values():
    """Fields whose expression gives null are left out; false, 0, "" and [] stay."""
    mapping = compile_mapping(
        {},
        {
            "missing": "nope",
            "null": "explicit",
            "false": "f",
            "zero": "z",
            "empty": "e",
            "list": "l",
            "object": "{a: z}",
        },
    )
    element = {"explicit": None, "f": False, "z": 0, "e": "", "l": []}
    assert mapping.apply(element).fields == {
        "false": False,
        "zero": 0,
        "empty": "",
        "list": [],
        "object": {"a": 0},
    }


def test_a_mapping_of_fields_only_supplies_no_name_type_or_occurred():
    """With no [instance.map], every map value is "not supplied"."""
    mapped = compile_mapping({}, {"s": "name"}).apply({"name": "n"})
    assert mapped == Mapped(None, None, None, {"s": "n"})


# Expressions that work, fail, or give values of every kind on arbitrary data.
EXPRESSIONS = [
    "name",
    "a.b.c",
    "length(@)",
    "length(name)",
    "keys(@)",
    "max(values(@))",
    "sort(values(@))",
    "join(',', values(@))",
    "to_number(name)",
    "ceil(to_number(name))",
    "abs(x)",
    "x[0]",
    "*.x | [0]",
    "not_null(x, name, `1`)",
    "&name",
    "values(@)[?@ > `1`]",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=8,
)
elements = st.dictionaries(
    st.sampled_from(["name", "x", "a", "b", "type"]) | st.text(max_size=5),
    json_values,
    max_size=6,
)


def reference(source, element):
    """jmespath's own search, with failures and results JSON cannot hold as None."""
    try:
        value = jmespath.search(source, element)
        json.dumps(value, allow_nan=False)
    except Exception:
        return None
    return value


@settings(max_examples=150, deadline=None)
@given(
    element=elements,
    name=st.sampled_from(EXPRESSIONS),
    field=st.sampled_from(EXPRESSIONS),
)
def test_apply_never_raises_and_gives_what_jmespath_gives(element, name, field):
    """Whatever the element, apply never raises and gives jmespath's JSON results."""
    mapped = compile_mapping({"name": name}, {"f": field}).apply(element)
    json.dumps([mapped.name, mapped.fields], allow_nan=False)
    assert None not in mapped.fields.values()
    assert mapped.name == reference(name, element)
    assert mapped.fields.get("f") == reference(field, element)


# -- resolve: precedence ----------------------------------------------------------


def test_a_mapped_value_wins_over_the_elements_own_field():
    """Non-null mapped values win over name, type and occurred in the element."""
    element = {"name": "own", "type": "own", "occurred": "2020-01-01T00:00:00Z"}
    mapped = nothing(name="m", type="mt", occurred=1700000000)
    assert resolved(element, mapped) == ("m", "mt", "2023-11-14T22:13:20Z")


def test_the_elements_own_field_applies_when_the_mapping_gives_null():
    """A mapped null leaves the element's own field in force."""
    element = {"name": "own", "type": "own-type", "occurred": "2020-01-01"}
    assert resolved(element, nothing()) == (
        "own",
        "own-type",
        "2020-01-01T00:00:00Z",
    )


def test_the_default_applies_when_neither_mapping_nor_element_gives_a_value():
    """Without a mapped value or a field of its own, the element gets the defaults."""
    assert resolved({}, nothing(), default_type="Wallarm") == (
        DEFAULT_NAME,
        "Wallarm",
        RECEIVED,
    )


def test_no_mapping_at_all_reads_the_element_alone():
    """With no mapping, the element's fields and then the defaults apply."""
    assert resolved({"type": "t"}, None, instance=None) == (DEFAULT_NAME, "t", RECEIVED)


def test_an_empty_mapped_string_is_a_value():
    """An empty string is a value, not null: it wins over the element's name."""
    assert resolved({"name": "own"}, nothing(name=""))[0] == ""


def test_a_mapped_value_replaces_an_invalid_field_of_the_element():
    """Where the mapping supplies a value, the element's own field is not judged."""
    element = {"name": 5, "type": [], "occurred": "yesterday"}
    mapped = nothing(name="n", type="t", occurred="2024-01-01T00:00:00Z")
    assert resolved(element, mapped) == ("n", "t", "2024-01-01T00:00:00Z")


# -- resolve: refusals --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [(5, "a number"), (True, "a boolean"), ([], "an array"), ({}, "an object")],
)
def test_a_mapped_name_that_is_not_a_string_is_refused(value, kind):
    """map.name must give a string; the 400 names element, instance and key."""
    assert resolve_refused({}, nothing(name=value)) == (
        f"element 3: instance 'wallarm': map.name must give a string, got {kind}"
    )


def test_a_mapped_type_that_is_not_a_string_is_refused():
    """map.type must give a string; the 400 names element, instance and key."""
    assert resolve_refused({}, nothing(type=1.5)) == (
        "element 3: instance 'wallarm': map.type must give a string, got a number"
    )


def test_a_mapped_occurred_that_is_not_a_date_is_refused():
    """map.occurred must give an ISO-8601 date-time or epoch number."""
    assert resolve_refused({}, nothing(occurred="soon")) == (
        "element 3: instance 'wallarm': map.occurred must give a date-time: "
        "not an ISO-8601 date-time"
    )
    assert resolve_refused({}, nothing(occurred=False)) == (
        "element 3: instance 'wallarm': map.occurred must give a date-time: "
        "a boolean is not a date"
    )


def test_a_refusal_for_a_single_object_names_the_body():
    """When the body is one object, the refusal says "body" instead of an index."""
    assert resolve_refused({}, nothing(name=1), index=None) == (
        "body: instance 'wallarm': map.name must give a string, got a number"
    )


def test_the_elements_own_invalid_field_is_refused_as_without_a_mapping():
    """An element's own invalid field gets the same 400 as without instances."""
    assert resolve_refused({"name": 5}, nothing()) == (
        "element 3: field 'name' must be a string"
    )
    assert resolve_refused({"type": 5}, nothing()) == (
        "element 3: field 'type' must be a string"
    )
    assert resolve_refused({"occurred": "soon"}, nothing()) == (
        "element 3: field 'occurred' is not a date-time: not an ISO-8601 date-time"
    )
