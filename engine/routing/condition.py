"""Route conditions: a small, safe expression language over JSON payload fields.

A route may carry a condition such as ``temperature > 30 and status == "ok"``.
It is parsed once, when the routing table is built, into nested closures; an
event then costs a few Python calls and no parsing.  Nothing here uses eval,
exec or Python's ast: the language can read fields and compare them, nothing
else, so a deployment cannot smuggle code into the hub.

Grammar (EBNF; whitespace separates tokens; keywords are lower case)::

    condition  = or_expr ;
    or_expr    = and_expr , { "or" , and_expr } ;
    and_expr   = not_expr , { "and" , not_expr } ;
    not_expr   = "not" , not_expr | primary ;
    primary    = "(" , or_expr , ")" | "exists" , "(" , path , ")" | comparison ;
    comparison = operand , [ compare_op , operand | [ "not" ] , "in" , ( list | path ) ] ;
    compare_op = "==" | "!=" | "<" | "<=" | ">" | ">=" ;
    operand    = path | literal ;
    path       = ( name | "$" ) , { "." , ( name | keyword ) | "[" , ( index | string ) , "]" } ;
    literal    = number | string | "true" | "false" | "null" | list ;
    list       = "[" , [ literal , { "," , literal } ] , "]" ;
    name       = ( letter | "_" ) , { letter | digit | "_" } ;     (* not a keyword *)
    keyword    = "and" | "or" | "not" | "in" | "exists" | "true" | "false" | "null" ;
    index      = digit , { digit } ;
    number     = [ "-" ] , digit , { digit } , [ "." , digit , { digit } ]
                 , [ ( "e" | "E" ) , [ "+" | "-" ] , digit , { digit } ] ;
    string     = '"' , { character | escape } , '"' | "'" , { character | escape } , "'" ;
    escape     = "\\" , ( '"' | "'" | "\\" | "/" | "b" | "f" | "n" | "r" | "t"
                        | "u" , 4 * hex_digit ) ;

``$`` is the payload itself, so ``$ > 3`` tests a bare number and ``$.and`` or
``$["odd key"]`` reach fields whose names are keywords or not names.

Semantics, chosen so that a condition never raises on a strange payload:

* A missing field (or an index past the end, or a step into a non-object)
  makes every comparison false, ``!=`` and ``not in`` included; wrap the
  comparison in ``not ( ... )`` to get true instead.
* ``==`` / ``!=`` compare JSON values: a number and a string are never equal,
  and a bool is not a number (``true == 1`` is false).  ``1 == 1.0`` is true.
* ``<``, ``<=``, ``>``, ``>=`` compare two numbers or two strings (by code
  point); for any other pair they are false.
* ``x in [..]`` is true when ``x`` equals (as ``==``) an element of the list
  literal, or of the array a path reads; a field that is not an array is false.
* ``exists(path)`` is true when the path reaches a value, ``null`` included.
* An operand alone is true only when it is the JSON value ``true``.

A syntax error raises ConditionError (a ValueError) with ``position``, the
0-based offset in the text, and a message naming what was expected there.
"""
from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["Condition", "ConditionError", "MISSING", "compile_condition"]

MAX_LENGTH = 4096
MAX_DEPTH = 64

Evaluate = Callable[[object], bool]
Getter = Callable[[object], object]


class ConditionError(ValueError):
    """A condition that does not parse; ``position`` is a 0-based offset in its text."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(f"{reason} at position {position}" if " at position " not in reason else reason)
        self.reason = reason
        self.position = position


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: What a path yields when the payload does not have it.
MISSING: Any = _Missing()

_KEYWORDS = frozenset({"and", "or", "not", "in", "exists", "true", "false", "null"})
_CONSTANTS = {"true": True, "false": False, "null": None}
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(?![A-Za-z0-9_.])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\].,$])
  | (?P<quote>["'])
  | (?P<end>\Z) )""", re.VERBOSE)
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_NUMBER = (int, float)


def _json_eq(a: object, b: object) -> bool:
    """JSON equality: bool is not a number, numbers compare by value, containers deeply."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is list:
            return len(a) == len(b) and all(map(_json_eq, a, b))  # type: ignore[arg-type]
        if ta is dict:
            return a.keys() == b.keys() and all(_json_eq(a[k], b[k]) for k in a)  # type: ignore[attr-defined,index]
        return a == b
    return ta in _NUMBER and tb in _NUMBER and a == b


def _compare(op: str, a: object, b: object) -> bool:
    """One comparison under the rules in the module docstring."""
    if a is MISSING or b is MISSING:
        return False
    if op == "==":
        return _json_eq(a, b)
    if op == "!=":
        return not _json_eq(a, b)
    ta, tb = type(a), type(b)
    if (ta in _NUMBER and tb in _NUMBER) or (ta is str and tb is str):
        return bool(_ORDER[op](a, b))
    return False


def _contains(items: object, x: object) -> bool:
    return type(items) is list and any(_json_eq(x, item) for item in items)


class Condition:
    """A compiled condition: ``condition(payload) -> bool`` on an already-parsed JSON value.

    ``evaluate`` is the compiled closure itself (the table calls it directly);
    ``needs_fields`` says whether it reads the payload at all."""

    __slots__ = ("source", "needs_fields", "evaluate")

    def __init__(self, source: str, evaluate: Evaluate, needs_fields: bool) -> None:
        self.source = source
        self.evaluate = evaluate
        self.needs_fields = needs_fields

    def __call__(self, payload: object) -> bool:
        return self.evaluate(payload)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def compile_condition(text: str) -> Condition:
    """Parse and compile ``text`` once; ConditionError (ValueError) if it does not parse."""
    if not isinstance(text, str):
        raise TypeError(f"a condition must be a str, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ConditionError(f"condition longer than {MAX_LENGTH} characters", MAX_LENGTH)
    parser = _Parser(text)
    evaluate = parser.parse()
    return Condition(text, evaluate, parser.reads_fields)


class _Parser:
    """Recursive descent straight into closures; operands are ("const", value) or ("path", getter)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.reads_fields = False

    # -- tokens -----------------------------------------------------------------
    def peek(self) -> tuple[str, Any, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, Any, int]:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept(self, kind: str, value: object = None) -> bool:
        k, v, _ = self.tokens[self.i]
        if k == kind and (value is None or v == value):
            self.i += 1
            return True
        return False

    def fail(self, expected: str) -> NoReturn:
        kind, value, pos = self.peek()
        found = "end of input" if kind == "end" else repr(self.text[pos:pos + 20].split()[0] if kind != "str" else value)
        raise ConditionError(f"expected {expected} at position {pos}, found {found}", pos)

    def expect(self, kind: str, value: str, expected: str) -> None:
        if not self.accept(kind, value):
            self.fail(expected)

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            pos = self.peek()[2]
            raise ConditionError(f"nesting deeper than {MAX_DEPTH} levels at position {pos}", pos)

    # -- grammar ----------------------------------------------------------------
    def parse(self) -> Evaluate:
        evaluate = self.or_expr()
        if self.peek()[0] != "end":
            self.fail("'and', 'or' or the end of the condition")
        return evaluate

    def or_expr(self) -> Evaluate:
        evaluate = self.and_expr()
        while self.accept("kw", "or"):
            evaluate = _either(evaluate, self.and_expr())
        return evaluate

    def and_expr(self) -> Evaluate:
        evaluate = self.not_expr()
        while self.accept("kw", "and"):
            evaluate = _both(evaluate, self.not_expr())
        return evaluate

    def not_expr(self) -> Evaluate:
        if self.accept("kw", "not"):
            self.nest()
            inner = self.not_expr()
            self.depth -= 1
            return lambda p: not inner(p)
        return self.primary()

    def primary(self) -> Evaluate:
        if self.accept("punct", "("):
            self.nest()
            evaluate = self.or_expr()
            self.expect("punct", ")", "')'")
            self.depth -= 1
            return evaluate
        if self.accept("kw", "exists"):
            self.expect("punct", "(", "'(' after 'exists'")
            if not self.at_path():
                self.fail("a field path")
            get = self.path()
            self.expect("punct", ")", "')'")
            return lambda p: get(p) is not MISSING
        return self.comparison()

    def comparison(self) -> Evaluate:
        left_pos = self.peek()[2]
        left = self.operand()
        kind, value, _ = self.peek()
        if kind == "op":
            self.take()
            return _compile_compare(value, left, self.operand())
        negate = self.accept("kw", "not")
        if negate or self.accept("kw", "in"):
            if negate:
                self.expect("kw", "in", "'in' after 'not'")
            right = self.path_or_list()
            evaluate = _compile_in(left, right, negate)
            return evaluate
        if left[0] == "path":
            get = left[1]
            return lambda p: get(p) is True
        if type(left[1]) is bool:
            constant = left[1]
            return lambda p: constant
        raise ConditionError(f"expected a comparison after the literal at position {left_pos}", left_pos)

    def at_path(self) -> bool:
        kind, value, _ = self.peek()
        return kind == "name" or (kind == "punct" and value == "$")

    def operand(self) -> tuple[str, Any]:
        if self.at_path():
            return ("path", self.path())
        return ("const", self.literal("an operand"))

    def path_or_list(self) -> tuple[str, Any]:
        if self.at_path():
            return ("path", self.path())
        if self.peek()[:2] == ("punct", "["):
            return ("const", self.literal("a list"))
        self.fail("a list or a field path")

    def path(self) -> Getter:
        self.reads_fields = True
        steps: list[str | int] = []
        if not self.accept("punct", "$"):
            steps.append(self.take()[1])
        while True:
            if self.accept("punct", "."):
                kind, value, _ = self.peek()
                if kind not in ("name", "kw"):
                    self.fail("a field name after '.'")
                steps.append(self.take()[1])
            elif self.accept("punct", "["):
                kind, value, _ = self.peek()
                if kind == "num" and type(value) is int and value >= 0:
                    steps.append(value)
                elif kind == "str":
                    steps.append(value)
                else:
                    self.fail("an index (0, 1, ...) or a quoted key")
                self.take()
                self.expect("punct", "]", "']'")
            else:
                return _getter(tuple(steps))

    def literal(self, expected: str) -> object:
        kind, value, _ = self.peek()
        if kind in ("num", "str"):
            self.take()
            return value
        if kind == "kw" and value in _CONSTANTS:
            self.take()
            return _CONSTANTS[value]
        if kind == "punct" and value == "[":
            self.take()
            self.nest()
            items: list[object] = []
            if not self.accept("punct", "]"):
                items.append(self.literal("a literal"))
                while self.accept("punct", ","):
                    items.append(self.literal("a literal"))
                self.expect("punct", "]", "',' or ']'")
            self.depth -= 1
            return items
        self.fail(expected)


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    """(kind, value, position) triples ending with ("end", None, len(text))."""
    tokens: list[tuple[str, Any, int]] = []
    pos = 0
    while True:
        m = _TOKEN.match(text, pos)
        if m is None:
            start = len(text) - len(text[pos:].lstrip())
            raise ConditionError(f"unexpected character {text[start]!r} at position {start}", start)
        kind = m.lastgroup
        start = m.start(kind)  # type: ignore[arg-type]
        if kind == "end":
            tokens.append(("end", None, start))
            return tokens
        if kind == "quote":
            value, pos = _string(text, start)
            tokens.append(("str", value, start))
            continue
        word = m.group(kind)  # type: ignore[arg-type]
        if kind == "num":
            number: object = int(word) if word.lstrip("-").isdigit() else float(word)
            if number in (float("inf"), float("-inf")):
                raise ConditionError(f"number {word} is out of range at position {start}", start)
            tokens.append(("num", number, start))
        elif kind == "name":
            tokens.append(("kw" if word in _KEYWORDS else "name", word, start))
        else:
            tokens.append(("op" if kind == "op" else "punct", word, start))
        pos = m.end()


def _string(text: str, start: int) -> tuple[str, int]:
    """Decode the quoted string at ``start``; return it and the offset after it."""
    quote, out, pos = text[start], [], start + 1
    while pos < len(text):
        ch = text[pos]
        if ch == quote:
            return "".join(out), pos + 1
        if ch != "\\":
            out.append(ch)
            pos += 1
            continue
        code = text[pos + 1:pos + 2]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            pos += 2
        elif code == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[pos + 2:pos + 6]):
            out.append(chr(int(text[pos + 2:pos + 6], 16)))
            pos += 6
        else:
            raise ConditionError(f"invalid escape {text[pos:pos + 2]!r} at position {pos}", pos)
    raise ConditionError(f"unterminated string starting at position {start}", start)


def _getter(steps: tuple[str | int, ...]) -> Getter:
    if not steps:
        return lambda p: p
    if len(steps) == 1 and type(steps[0]) is str:
        key = steps[0]
        return lambda p: p.get(key, MISSING) if type(p) is dict else MISSING  # type: ignore[attr-defined]

    def get(p: Any) -> object:
        for step in steps:
            if type(step) is str:
                if type(p) is not dict:
                    return MISSING
                p = p.get(step, MISSING)
                if p is MISSING:
                    return MISSING
            elif type(p) is not list or step >= len(p):  # type: ignore[operator]
                return MISSING
            else:
                p = p[step]
        return p
    return get


def _either(a: Evaluate, b: Evaluate) -> Evaluate:
    return lambda p: a(p) or b(p)


def _both(a: Evaluate, b: Evaluate) -> Evaluate:
    return lambda p: a(p) and b(p)


def _compile_compare(op: str, left: tuple[str, Any], right: tuple[str, Any]) -> Evaluate:
    if left[0] == "const" and right[0] == "const":
        constant = _compare(op, left[1], right[1])
        return lambda p: constant
    if left[0] == "const":
        op, left, right = _FLIP[op], right, left
    get = left[1]
    if right[0] == "path":
        other = right[1]
        return lambda p: _compare(op, get(p), other(p))
    c = right[1]
    tc = type(c)
    if tc in _NUMBER and op in _ORDER:
        order = _ORDER[op]

        def number_order(p: object) -> bool:
            v = get(p)
            t = type(v)
            return (t is int or t is float) and order(v, c)
        return number_order
    if tc is str or c is None or tc is bool:
        # Scalars whose equality needs no JSON rules beyond the type check.
        if op == "==":
            return lambda p: type(v := get(p)) is tc and v == c
        if op == "!=":
            return lambda p: (v := get(p)) is not MISSING and not (type(v) is tc and v == c)
    return lambda p: _compare(op, get(p), c)


def _compile_in(left: tuple[str, Any], right: tuple[str, Any], negate: bool) -> Evaluate:
    if right[0] == "path":
        items = right[1]
        if left[0] == "const":
            x = left[1]
            found: Evaluate = lambda p: _contains(items(p), x)
        else:
            get = left[1]
            found = lambda p: _contains(items(p), get(p))
        present: Evaluate = lambda p: type(items(p)) is list and (left[0] == "const" or left[1](p) is not MISSING)
    else:
        values = right[1]
        if left[0] == "const":
            constant = _contains(values, left[1]) != negate
            return lambda p: constant
        get = left[1]
        found = lambda p: _contains(values, get(p))
        present = lambda p: get(p) is not MISSING
    if negate:
        return lambda p: present(p) and not found(p)
    return found
