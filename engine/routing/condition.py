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
* A field alone is true only when its value is the JSON ``true``; a literal
  alone must be ``true`` or ``false``.

A condition is at most MAX_LENGTH characters and nests (parentheses, ``not``,
lists) at most MAX_DEPTH deep; ``and`` / ``or`` chains compile to balanced
trees, so no length of chain can exhaust Python's stack when evaluated.

A syntax error raises ConditionError (a ValueError) with ``position``, the
0-based offset in the text, and a message naming what was expected there.
"""
from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn

__all__ = ["Condition", "ConditionError", "MISSING", "compile_condition"]

MAX_LENGTH = 4096
MAX_DEPTH = 64

Evaluate = Callable[[object], bool]
Getter = Callable[[object], object]


class ConditionError(ValueError):
    """A condition that does not parse; ``position`` is a 0-based offset in its text."""

    def __init__(self, reason: str, position: int, found: str | None = None) -> None:
        message = f"{reason} at position {position}"
        super().__init__(message if found is None else f"{message}, found {found}")
        self.reason = reason
        self.position = position


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: What a path yields when the payload does not have it.
MISSING: Any = _Missing()

class _Path(NamedTuple):
    get: Getter
    key: str | None  # the key when the path is one top-level key: read inline


_IS_TRUE: Evaluate = lambda v: v is True  # noqa: E731
_KEYWORDS = frozenset({"and", "or", "not", "in", "exists", "true", "false", "null"})
_CONSTANTS = {"true": True, "false": False, "null": None}
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\].,$])
  | (?P<quote>["'])
  | (?P<end>\Z) )""", re.VERBOSE)
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_HINTS = {"=": " (equality is '==')", "&": " (use 'and')", "|": " (use 'or')", "!": " (use 'not' or '!=')"}
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_NUMBER = (int, float)


def _json_eq(a: Any, b: Any) -> bool:
    """JSON equality: bool is not a number, numbers compare by value, containers deeply."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is list:
            return len(a) == len(b) and all(map(_json_eq, a, b))
        if ta is dict:
            return bool(a.keys() == b.keys()) and all(_json_eq(a[k], b[k]) for k in a)
        return bool(a == b)
    return ta in _NUMBER and tb in _NUMBER and a == b


def _compare(op: str, a: Any, b: Any) -> bool:
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


Token = tuple[str, Any, int, int]  # kind, value, start, end


class _Parser:
    """Recursive descent straight into closures; an operand is ("const", value) or ("path", _Path)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.reads_fields = False

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        self.i += 1
        return self.tokens[self.i - 1]

    def accept(self, kind: str, value: str) -> bool:
        token = self.tokens[self.i]
        if token[0] == kind and token[1] == value:
            self.i += 1
            return True
        return False

    def fail(self, expected: str) -> NoReturn:
        kind, _, start, end = self.peek()
        found = "end of input" if kind == "end" else repr(self.text[start:end])
        raise ConditionError(f"expected {expected}", start, found)

    def expect(self, kind: str, value: str, expected: str) -> None:
        if not self.accept(kind, value):
            self.fail(expected)

    def nest(self, step: int) -> None:
        self.depth += step
        if self.depth > MAX_DEPTH:
            raise ConditionError(f"nesting deeper than {MAX_DEPTH} levels", self.peek()[2])

    def parse(self) -> Evaluate:
        evaluate = self.or_expr()
        if self.peek()[0] != "end":
            self.fail("'and', 'or' or the end of the condition")
        return evaluate

    def or_expr(self) -> Evaluate:
        terms = [self.and_expr()]
        while self.accept("kw", "or"):
            terms.append(self.and_expr())
        return _any(terms)

    def and_expr(self) -> Evaluate:
        terms = [self.not_expr()]
        while self.accept("kw", "and"):
            terms.append(self.not_expr())
        return _all(terms)

    def not_expr(self) -> Evaluate:
        if not self.accept("kw", "not"):
            return self.primary()
        self.nest(1)
        inner = self.not_expr()
        self.nest(-1)
        return lambda p: not inner(p)

    def primary(self) -> Evaluate:
        if self.accept("punct", "("):
            self.nest(1)
            evaluate = self.or_expr()
            self.expect("punct", ")", "')'")
            self.nest(-1)
            return evaluate
        if self.accept("kw", "exists"):
            self.expect("punct", "(", "'(' after 'exists'")
            if not self.at_path():
                self.fail("a field path")
            get = self.path().get
            self.expect("punct", ")", "')'")
            return lambda p: get(p) is not MISSING
        return self.comparison()

    def comparison(self) -> Evaluate:
        start = self.peek()[2]
        left = self.operand("an operand")
        kind, value, _, _ = self.peek()
        if kind == "op":
            self.take()
            return _compile_compare(value, left, self.operand("an operand"))
        negate = self.accept("kw", "not")
        if negate or self.accept("kw", "in"):
            if negate:
                self.expect("kw", "in", "'in' after 'not'")
            if not (self.at_path() or self.peek()[:2] == ("punct", "[")):
                self.fail("a list or a field path")
            return _compile_in(left, self.operand("a list"), negate)
        if left[0] == "path":
            return _on(left[1], _IS_TRUE)
        if type(left[1]) is bool:
            constant = left[1]
            return lambda p: constant
        raise ConditionError("expected a comparison operator after the literal starting", start)

    def at_path(self) -> bool:
        kind, value, _, _ = self.peek()
        return kind == "name" or (kind == "punct" and value == "$")

    def operand(self, expected: str) -> tuple[str, Any]:
        if self.at_path():
            return ("path", self.path())
        return ("const", self.literal(expected))

    def path(self) -> _Path:
        self.reads_fields = True
        steps: list[str | int] = [] if self.accept("punct", "$") else [self.take()[1]]
        while True:
            if self.accept("punct", "."):
                if self.peek()[0] not in ("name", "kw"):
                    self.fail("a field name after '.'")
                steps.append(self.take()[1])
            elif self.accept("punct", "["):
                kind, value, _, _ = self.peek()
                if not (kind == "str" or (kind == "num" and type(value) is int and value >= 0)):
                    self.fail("an index (0, 1, ...) or a quoted key")
                steps.append(self.take()[1])
                self.expect("punct", "]", "']'")
            else:
                key = steps[0] if len(steps) == 1 and type(steps[0]) is str else None
                return _Path(_getter(tuple(steps)), key if isinstance(key, str) else None)

    def literal(self, expected: str) -> object:
        kind, value, _, _ = self.peek()
        if kind in ("num", "str") or (kind == "kw" and value in _CONSTANTS):
            self.take()
            return _CONSTANTS.get(value, value) if kind == "kw" else value
        if not self.accept("punct", "["):
            self.fail(expected)
        self.nest(1)
        items: list[object] = []
        if not self.accept("punct", "]"):
            items.append(self.literal("a literal"))
            while self.accept("punct", ","):
                items.append(self.literal("a literal"))
            self.expect("punct", "]", "',' or ']'")
        self.nest(-1)
        return items


def _tokenize(text: str) -> list[Token]:
    """(kind, value, start, end) tokens, the last one ("end", None, len(text), len(text))."""
    tokens: list[Token] = []
    pos = 0
    while True:
        m = _TOKEN.match(text, pos)
        if m is None:
            rest = text[pos:]
            start = pos + len(rest) - len(rest.lstrip())
            hint = _HINTS.get(text[start], "")
            raise ConditionError(f"unexpected character {text[start]!r}{hint}", start)
        kind = m.lastgroup or "end"
        start, pos = m.start(kind), m.end()
        word = m.group(kind)
        if kind == "end":
            tokens.append(("end", None, start, start))
            return tokens
        if kind == "quote":
            value, pos = _string(text, start)
            tokens.append(("str", value, start, pos))
        elif kind == "num":
            number = int(word) if word.lstrip("-").isdigit() else float(word)
            if number in (float("inf"), float("-inf")):
                raise ConditionError(f"number {word} out of range", start)
            tokens.append(("num", number, start, pos))
        elif kind == "name":
            tokens.append(("kw" if word in _KEYWORDS else "name", word, start, pos))
        else:
            tokens.append((kind, word, start, pos))


def _string(text: str, start: int) -> tuple[str, int]:
    """Decode the quoted string at ``start``; return it and the offset after it."""
    quote, pos = text[start], start + 1
    out: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if ch == quote:
            return "".join(out), pos + 1
        if ch != "\\":
            out.append(ch)
            pos += 1
        elif text[pos + 1:pos + 2] in _ESCAPES:
            out.append(_ESCAPES[text[pos + 1]])
            pos += 2
        elif text[pos + 1:pos + 2] == "u" and _HEX4.fullmatch(text, pos + 2, pos + 6):
            out.append(chr(int(text[pos + 2:pos + 6], 16)))
            pos += 6
        else:
            raise ConditionError(f"invalid escape {text[pos:pos + 2]!r}", pos)
    raise ConditionError("unterminated string starting", start)


def _getter(steps: tuple[str | int, ...]) -> Getter:
    if not steps:
        return lambda p: p
    if len(steps) == 1 and type(steps[0]) is str:
        key = steps[0]
        return lambda p: p.get(key, MISSING) if type(p) is dict else MISSING

    def get(p: Any) -> object:
        for step in steps:
            if type(step) is str:
                if type(p) is not dict:
                    return MISSING
                p = p.get(step, MISSING)
                if p is MISSING:
                    return MISSING
            elif type(p) is list and type(step) is int and step < len(p):
                p = p[step]
            else:
                return MISSING
        return p
    return get


def _any(terms: list[Evaluate]) -> Evaluate:
    """``or`` of the terms, left to right, as a balanced tree of closures (no deep recursion)."""
    while len(terms) > 1:
        terms = [_either(*terms[i:i + 2]) for i in range(0, len(terms), 2)]
    return terms[0]


def _all(terms: list[Evaluate]) -> Evaluate:
    """``and`` of the terms, left to right, as a balanced tree of closures."""
    while len(terms) > 1:
        terms = [_both(*terms[i:i + 2]) for i in range(0, len(terms), 2)]
    return terms[0]


def _either(a: Evaluate, b: Evaluate | None = None) -> Evaluate:
    return a if b is None else lambda p: a(p) or b(p)


def _both(a: Evaluate, b: Evaluate | None = None) -> Evaluate:
    return a if b is None else lambda p: a(p) and b(p)


def _on(path: _Path, test: Evaluate) -> Evaluate:
    """``test`` applied to the value at ``path``; a missing value is false.  A
    top-level key is read inline: one closure call per comparison."""
    key = path.key
    if key is not None:
        return lambda p: type(p) is dict and (v := p.get(key, MISSING)) is not MISSING and test(v)
    get = path.get
    return lambda p: (v := get(p)) is not MISSING and test(v)


def _number_test(op: str, c: object) -> Evaluate:
    """A field against a number: the type check and the operator, in one closure."""
    if op == "==":
        return lambda v: (type(v) is int or type(v) is float) and v == c
    if op == "!=":
        return lambda v: not ((type(v) is int or type(v) is float) and v == c)
    if op == "<":
        return lambda v: (type(v) is int or type(v) is float) and v < c  # type: ignore[operator]
    if op == "<=":
        return lambda v: (type(v) is int or type(v) is float) and v <= c  # type: ignore[operator]
    if op == ">":
        return lambda v: (type(v) is int or type(v) is float) and v > c  # type: ignore[operator]
    return lambda v: (type(v) is int or type(v) is float) and v >= c  # type: ignore[operator]


def _compile_compare(op: str, left: tuple[str, Any], right: tuple[str, Any]) -> Evaluate:
    if left[0] == "const" and right[0] == "const":
        constant = _compare(op, left[1], right[1])
        return lambda p: constant
    if left[0] == "const":
        op, left, right = _FLIP[op], right, left
    if right[0] == "path":
        get, other = left[1].get, right[1].get
        return lambda p: _compare(op, get(p), other(p))
    c = right[1]
    tc = type(c)
    if tc in _NUMBER:
        return _on(left[1], _number_test(op, c))
    if (tc is str or tc is bool or c is None) and op in ("==", "!="):
        # Scalars whose JSON equality is the type check plus Python equality.
        if op == "==":
            return _on(left[1], lambda v: type(v) is tc and v == c)
        return _on(left[1], lambda v: not (type(v) is tc and v == c))
    return _on(left[1], lambda v: _compare(op, v, c))


def _scalar_key(x: object) -> tuple[str, object]:
    """A hashable key under which two scalars collide exactly when they are JSON-equal."""
    t = type(x)
    return ("b" if t is bool else "n" if t in _NUMBER else "s" if t is str else "z", x)


def _member_of(c: object) -> Evaluate:
    """Whether a list holds an element JSON-equal to the constant ``c``."""
    tc = type(c)
    if tc is str or c is None:  # Python equality already refuses every other type
        return lambda items: c in items  # type: ignore[operator]
    if tc is bool:
        return lambda items: any(x is c for x in items)  # type: ignore[attr-defined]
    if tc in _NUMBER:
        return lambda items: any((type(x) is int or type(x) is float) and x == c for x in items)  # type: ignore[attr-defined]
    return lambda items: any(_json_eq(c, x) for x in items)  # type: ignore[attr-defined]


def _compile_in(left: tuple[str, Any], right: tuple[str, Any], negate: bool) -> Evaluate:
    if right[0] == "path":
        if left[0] == "const":
            member = _member_of(left[1])
            return _on(right[1], lambda v: type(v) is list and member(v) != negate)
        get, items = left[1].get, right[1].get

        def in_field(p: object) -> bool:
            found, x = items(p), get(p)
            if type(found) is not list or x is MISSING:
                return False
            return any(_json_eq(x, item) for item in found) != negate
        return in_field
    values = right[1]
    if all(type(v) not in (list, dict) for v in values):
        keys = frozenset(map(_scalar_key, values))
        test: Evaluate = lambda x: (type(x) is not list and type(x) is not dict and _scalar_key(x) in keys) != negate
    else:
        test = lambda x: any(_json_eq(x, v) for v in values) != negate
    if left[0] == "const":
        constant = test(left[1])
        return lambda p: constant
    return _on(left[1], test)
