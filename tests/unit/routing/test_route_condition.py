"""Route conditions: grammar, precedence, JSON type rules, error positions."""
from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.routing import condition as condition_module
from engine.routing.condition import MISSING, Condition, ConditionError, compile_condition

DOC = {
    "temperature": 31.5,
    "count": 3,
    "status": "ok",
    "flag": True,
    "off": False,
    "nothing": None,
    "reading": {"value": 2.5, "unit": "C", "and": 1},
    "tags": ["hvac", "roof"],
    "matrix": [[1, 2], [3, 4]],
    "odd key": "yes",
}

CASES = [
    # comparisons on numbers
    ("temperature > 30", True),
    ("temperature >= 31.5", True),
    ("temperature < 31.5", False),
    ("temperature <= 31.5", True),
    ("count == 3", True),
    ("count == 3.0", True),
    ("count != 3", False),
    ("count != 4", True),
    ("30 < temperature", True),
    ("-1 < count", True),
    ("count > -1.5e1", True),
    # strings
    ('status == "ok"', True),
    ("status == 'ok'", True),
    ('status != "ok"', False),
    ('status < "p"', True),
    ('status >= "ok"', True),
    (r'"a\"b" == "a\u0022b"', True),
    # paths
    ("reading.value == 2.5", True),
    ("reading.unit == 'C'", True),
    ("reading.and == 1", True),
    ("tags[0] == 'hvac'", True),
    ("tags[1] == 'roof'", True),
    ("matrix[1][0] == 3", True),
    ('$["odd key"] == "yes"', True),
    ('reading["unit"] == "C"', True),
    ("$.count == 3", True),
    # bare operands: only JSON true is true
    ("flag", True),
    ("off", False),
    ("count", False),
    ("true", True),
    ("false", False),
    # in / not in
    ("'hvac' in tags", True),
    ("'lab' in tags", False),
    ("'lab' not in tags", True),
    ("status in ['ok', 'fault']", True),
    ("status not in ['ok', 'fault']", False),
    ("count in [1, 2, 3]", True),
    ("count in [3.0]", True),
    ("count in ['3']", False),
    ("flag in [1]", False),
    ("flag in [true]", True),
    ("nothing in [null]", True),
    ("tags in [['hvac', 'roof'], 1]", True),
    ("3 in [3]", True),
    ("[] == []", True),
    # exists
    ("exists(status)", True),
    ("exists(nothing)", True),
    ("exists(missing)", False),
    ("exists(reading.value)", True),
    ("exists(tags[2])", False),
    ("exists($)", True),
    # null and bool
    ("nothing == null", True),
    ("nothing != null", False),
    ("flag == true", True),
    ("flag == 1", False),
    ("flag != 1", True),
    ("off == false", True),
    ("count == true", False),
    # boolean structure and precedence: not > and > or
    ("flag and count == 3", True),
    ("off or count == 3", True),
    ("off and count == 3", False),
    ("not off", True),
    ("not not flag", True),
    ("flag or off and off", True),  # flag or (off and off)
    ("(flag or off) and off", False),
    ("not off and off", False),  # (not off) and off
    ("not (off and off)", True),
    ("off or off or flag", True),
    ("flag and flag and flag and off", False),
    ("((((count == 3))))", True),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_cases(text: str, expected: bool) -> None:
    condition = compile_condition(text)
    assert condition(DOC) is expected
    assert condition.source == text


MISSING_FIELD = ["missing == 1", "missing != 1", "missing < 1", "missing >= 'a'", "missing in [1]",
                 "missing not in [1]", "1 in missing", "missing == null", "missing != null",
                 "missing == other", "reading.missing == 1", "tags[9] != 1", "status.x != 1",
                 "count[0] != 1", "missing"]


@pytest.mark.parametrize("text", MISSING_FIELD)
def test_a_missing_field_makes_a_comparison_false(text: str) -> None:
    condition = compile_condition(text)
    assert condition(DOC) is False
    assert condition({}) is False
    assert condition("not an object") is False
    assert compile_condition(f"not ({text})")(DOC) is True


TYPE_RULES = [
    ("status == 3", False), ("status != 3", True), ("status < 3", False), ("status > 3", False),
    ("count < 'a'", False), ("flag < 2", False), ("flag > 0", False), ("nothing < 1", False),
    ("tags < 1", False), ("reading > 1", False), ("'3' == 3", False), ("true == 1", False),
    ("reading == reading", True), ("tags == ['hvac', 'roof']", True), ("tags != ['hvac']", True),
]


@pytest.mark.parametrize(("text", "expected"), TYPE_RULES)
def test_type_rules(text: str, expected: bool) -> None:
    assert compile_condition(text)(DOC) is expected


def test_payload_that_is_not_an_object() -> None:
    assert compile_condition("$ > 3")(4) is True
    assert compile_condition("$ > 3")("4") is False
    assert compile_condition("$[1] == 'b'")(["a", "b"]) is True
    assert compile_condition("x == 1")([1]) is False
    assert compile_condition("x == 1")(None) is False


def test_needs_fields() -> None:
    assert compile_condition("count == 3").needs_fields is True
    assert compile_condition("exists(x)").needs_fields is True
    assert compile_condition("$ == 1").needs_fields is True
    assert compile_condition("true").needs_fields is False
    assert compile_condition("1 < 2 and 'a' in ['a']").needs_fields is False


def test_parsed_once_and_never_again(monkeypatch: pytest.MonkeyPatch) -> None:
    condition = compile_condition("temperature > 30 and 'hvac' in tags")

    def no_parsing(*args: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(condition_module, "_tokenize", no_parsing)
    monkeypatch.setattr(condition_module, "_Parser", no_parsing)
    assert condition(DOC) is True
    assert condition.evaluate(DOC) is True


def test_condition_value_semantics() -> None:
    assert compile_condition("a == 1") == compile_condition("a == 1")
    assert len({compile_condition("a == 1"), compile_condition("a == 1")}) == 1
    assert isinstance(compile_condition("a"), Condition)
    assert repr(compile_condition("a")) == "Condition('a')"
    assert repr(MISSING) == "MISSING"


ERRORS = [
    # (text, position, message fragment)
    ("temperature > ", 14, "expected an operand"),
    ("temperature >", 13, "expected an operand"),
    ("", 0, "expected an operand"),
    ("   ", 3, "expected an operand"),
    ("and", 0, "expected an operand"),
    ("a == 1 and", 10, "expected an operand"),
    ("(a == 1", 7, "expected ')'"),
    ("(a == 1))", 8, "expected 'and', 'or' or the end"),
    ("a = 1", 2, "unexpected character '='"),
    ("a && b", 2, "use 'and'"),
    ("a == 'x", 5, "unterminated string"),
    ('a == "x\\q"', 7, "invalid escape"),
    ('a == "\\u12G4"', 6, "invalid escape"),
    ("x in 5", 5, "expected a list or a field path"),
    ("x not 5", 6, "expected 'in' after 'not'"),
    ("5", 0, "expected a comparison operator"),
    ("'abc'", 0, "expected a comparison operator"),
    ("a.", 2, "expected a field name after '.'"),
    ("a[-1]", 2, "expected an index"),
    ("a[x]", 2, "expected an index"),
    ("a[0", 3, "expected ']'"),
    ("a == 1 b", 7, "expected 'and', 'or' or the end"),
    ("a < b < c", 6, "expected 'and', 'or' or the end"),
    ("exists x", 7, "expected '(' after 'exists'"),
    ("exists(1)", 7, "expected a field path"),
    ("exists(a", 8, "expected ')'"),
    ("x in [1, 2", 10, "expected ',' or ']'"),
    ("x in [1, a]", 9, "expected a literal"),
    ("a == 1e999", 5, "out of range"),
    ("__import__('os')", 10, "expected 'and', 'or' or the end"),
    ("a.b()", 3, "expected 'and', 'or' or the end"),
    ("a ~ b", 2, "unexpected character '~'"),
    ("not", 3, "expected an operand"),
]


@pytest.mark.parametrize(("text", "position", "fragment"), ERRORS)
def test_syntax_errors_say_where_and_what(text: str, position: int, fragment: str) -> None:
    with pytest.raises(ConditionError) as info:
        compile_condition(text)
    assert info.value.position == position, str(info.value)
    assert fragment in str(info.value)
    assert f"at position {position}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_limits() -> None:
    with pytest.raises(ConditionError, match="nesting deeper"):
        compile_condition("(" * 100 + "a" + ")" * 100)
    with pytest.raises(ConditionError, match="nesting deeper"):
        compile_condition("not " * 100 + "a")
    with pytest.raises(ConditionError, match="longer than"):
        compile_condition("a == 1 or " * 1000 + "a")
    long_chain = " and ".join(["a == 1"] * 300)  # flat, not nested: evaluates without recursion
    assert compile_condition(long_chain)({"a": 1}) is True
    assert compile_condition(" or ".join(["a == 2"] * 300))({"a": 1}) is False
    with pytest.raises(TypeError):
        compile_condition(None)  # type: ignore[arg-type]


# -- property: the compiled comparisons against a separately written reference --

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from([0.5, -2.0, 3.0]),
                    st.sampled_from(["", "a", "b", "3"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2))
OPERATORS = ["==", "!=", "<", "<=", ">", ">="]


def kind(v: object) -> str:
    return {bool: "bool", int: "num", float: "num", str: "str", type(None): "null", list: "list"}[type(v)]


def json_equal(a: Any, b: Any) -> bool:
    if kind(a) != kind(b):
        return False
    if kind(a) == "list":
        return len(a) == len(b) and all(map(json_equal, a, b))
    return bool(a == b)


def reference(op: str, a: Any, b: Any) -> bool:
    if op in ("==", "!="):
        return json_equal(a, b) is (op == "==")
    if kind(a) != kind(b) or kind(a) not in ("num", "str"):
        return False
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


@settings(max_examples=400, deadline=None)
@given(a=VALUES, b=VALUES, op=st.sampled_from(OPERATORS))
def test_comparisons_against_a_reference(a: object, b: object, op: str) -> None:
    expected = reference(op, a, b)
    doc = {"a": a, "b": b}
    assert compile_condition(f"a {op} b")(doc) is expected
    assert compile_condition(f"a {op} {json.dumps(b)}")(doc) is expected
    assert compile_condition(f"{json.dumps(a)} {op} b")(doc) is expected
    assert compile_condition(f"{json.dumps(a)} {op} {json.dumps(b)}")({}) is expected
    if isinstance(b, list):
        member = any(json_equal(a, x) for x in b)
        assert compile_condition(f"a in {json.dumps(b)}")(doc) is member
        assert compile_condition("a in b")(doc) is member
        assert compile_condition(f"a not in {json.dumps(b)}")(doc) is (not member)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="ab01 .[]()'\"=!<>-,$\\inotexs", max_size=30))
def test_random_text_parses_or_raises_condition_error(text: str) -> None:
    try:
        condition = compile_condition(text)
    except ConditionError as exc:
        assert 0 <= exc.position <= len(text)
    else:
        for payload in (DOC, {}, None, [1], {"a": [0, {"b": 1}], "b": "x"}, math.pi):
            assert condition(payload) in (True, False)
