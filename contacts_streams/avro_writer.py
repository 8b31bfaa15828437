"""A schema-specific Avro binary writer: the bytes fastavro's ``schemaless_writer`` writes, for
the common records, at a fraction of its cost.

fastavro picks each union branch by validating the value against the branches in order, for
every field of every record; the contacts and events are mostly nullable strings, so that is
most of the writer's encode time. ``compile_writer`` turns a parsed schema into Python source
once (one function per named record) that tells a branch by the value's exact type.

It is deliberately narrow: whatever it is not sure to write exactly as fastavro does (a value
whose type is not the exact Python type of its branch, a number out of its branch's range, an
int where a double is expected, a dict with fastavro's ``-type`` key, a missing field without
a default) raises, and the caller then encodes the record with fastavro, which writes it or
says why not. A schema with something it does not handle (enum, fixed, float, a union it
cannot tell apart by type) compiles to None: the codec keeps using fastavro for it.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
_PRIMITIVES = ("null", "boolean", "int", "long", "double", "string", "bytes")


class Unsupported(ValueError):
    """A schema this writer does not compile (fastavro writes its records)."""


class Fallback(ValueError):
    """A value this writer leaves to fastavro."""


def zigzag(n: int) -> bytes:
    """A long as Avro writes it: zig-zag, then a little-endian base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Larger longs are mostly timestamps, which the records of a batch share.
_zigzag_cached = functools.lru_cache(maxsize=4096)(zigzag)

# The lengths and small numbers most values have, encoded once.
_SMALL_COUNT = 4096
_SMALL = tuple(zigzag(n) for n in range(_SMALL_COUNT))
_DOUBLE = struct.Struct("<d").pack


def _long(n: int) -> bytes:
    if 0 <= n < _SMALL_COUNT:
        return _SMALL[n]
    return zigzag(n)


def _type_name(schema: Any) -> str:
    if isinstance(schema, dict):
        return schema["type"]
    if isinstance(schema, list):
        return "union"
    return schema


class SchemaCompiler:
    """What the writer's and the reader's compilers share: one generated function per named
    record (made once; a recursive record calls its own), fresh variable names, and named
    types resolved to their schemas. Subclasses say what a record's function does."""

    prefix = "f"

    def __init__(self) -> None:
        self.functions: dict[str, str] = {}  # record full name -> generated function name
        self.sources: list[str] = []
        self.named: dict[str, dict] = {}
        self._open: set[str] = set()  # records being written out: a reference to one is recursion
        self._counter = 0

    def var(self) -> str:
        self._counter += 1
        return f"v{self._counter}"

    def record(self, schema: dict) -> str:
        """The name of the function for this record (made once; recursive records call it)."""
        name = schema["name"]
        if name in self.functions:
            return self.functions[name]
        function = f"{self.prefix}{len(self.functions)}"
        self.functions[name] = function
        self.named[name] = schema
        self._open.add(name)
        lines = self.record_lines(function, schema)
        self._open.discard(name)
        self.sources.append("\n".join(lines))
        return function

    def record_lines(self, function: str, schema: dict) -> list[str]:
        raise NotImplementedError

    def fields(self, schema: dict, value: str, i: str) -> list[str]:
        """The lines that handle a record's fields in place, `value` the record's variable."""
        raise NotImplementedError

    def inline_record(self, schema: dict, value: str, i: str, call: Callable[[str], str]) -> list[str]:
        """A record's fields in place (no call per record: a list of events' field changes, an
        address); a record inside itself gets its function, and `call` makes the line that
        calls it from the function's name."""
        name = schema["name"]
        if name in self._open:
            return [call(self.record(schema))]
        self.named.setdefault(name, schema)
        self._open.add(name)
        lines = self.fields(schema, value, i)
        self._open.discard(name)
        return lines

    @classmethod
    def build(cls, parsed: dict, what: str, names: Callable[[Any], dict[str, Any]]) -> Any | None:
        """The generated function of the top record of a fastavro-parsed schema, its source run
        with the names ``names(compiler)`` gives; None for a schema this compiler does not handle."""
        compiler = cls()
        for name, schema in (parsed.get("__named_schemas") or {}).items():
            compiler.named.setdefault(name, schema)
        try:
            if _type_name(parsed) != "record":
                raise Unsupported("not a record")
            top = compiler.record(parsed)
        except Unsupported:
            return None
        namespace = names(compiler)
        exec(compile("\n\n".join(compiler.sources), f"<avro {what} of {parsed.get('name')}>", "exec"), namespace)  # noqa: S102
        return namespace[top]

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            if schema not in self.named:
                raise Unsupported(f"unknown named type {schema}")
            return self.named[schema]
        if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
            if set(schema) - {"type"}:
                raise Unsupported(f"a primitive with attributes: {schema}")
            return schema["type"]
        return schema


class _Compiler(SchemaCompiler):
    prefix = "w"

    def __init__(self) -> None:
        super().__init__()
        self.constants: list[Any] = []

    def constant(self, value: Any) -> str:
        self.constants.append(value)
        return f"K[{len(self.constants) - 1}]"

    def record_lines(self, function: str, schema: dict) -> list[str]:
        return [f"def {function}(d, a):", *self.fields(schema, "d", "    ")]

    def fields(self, schema: dict, d: str, i: str) -> list[str]:
        lines = [f"{i}if type({d}) is not dict: raise F"]
        for field in schema["fields"]:
            value = self.var()
            key = repr(field["name"])
            if "default" in field:
                default = field["default"]
                lines.append(f"{i}{value} = {d}.get({key}, {self.constant(default) if default is not None else 'None'})")
            else:
                lines.append(f"{i}{value} = {d}[{key}]")
            lines += self.value(field["type"], value, i)
        return lines

    def value(self, schema: Any, v: str, indent: str) -> list[str]:
        """Lines that append the encoding of variable ``v`` to the list's append ``a``."""
        schema = self.resolve(schema)
        kind = _type_name(schema)
        i = indent
        if kind == "null":
            return [f"{i}if {v} is not None: raise F"]
        if kind == "boolean":
            return [f"{i}if {v} is True: a(b'\\x01')", f"{i}elif {v} is False: a(b'\\x00')", f"{i}else: raise F"]
        if kind in ("int", "long"):
            low, high = (INT_MIN, INT_MAX) if kind == "int" else (LONG_MIN, LONG_MAX)
            return [
                f"{i}if type({v}) is not int or not {low} <= {v} <= {high}: raise F",
                f"{i}a(S[{v}] if 0 <= {v} < {_SMALL_COUNT} else Z({v}))",
            ]
        if kind == "double":
            return [f"{i}if type({v}) is not float: raise F", f"{i}a(D({v}))"]
        if kind == "string":
            e = self.var()
            n = self.var()
            return [
                f"{i}if type({v}) is not str: raise F",
                f"{i}{e} = {v}.encode()",
                f"{i}{n} = len({e})",
                f"{i}a(S[{n}] if {n} < {_SMALL_COUNT} else Z({n}))",
                f"{i}a({e})",
            ]
        if kind == "bytes":
            return [f"{i}if type({v}) is not bytes: raise F", f"{i}a(L(len({v})))", f"{i}a({v})"]
        if kind == "record":
            return self.inline_record(schema, v, i, lambda function: f"{i}{function}({v}, a)")
        if kind == "array":
            item = self.var()
            return [
                f"{i}if type({v}) is not list: raise F",
                f"{i}if {v}:",
                f"{i}    a(L(len({v})))",
                f"{i}    for {item} in {v}:",
                *self.value(schema["items"], item, i + "        "),
                f"{i}a(b'\\x00')",
            ]
        if kind == "map":
            key, item = self.var(), self.var()
            return [
                f"{i}if type({v}) is not dict: raise F",
                f"{i}if {v}:",
                f"{i}    a(L(len({v})))",
                f"{i}    for {key}, {item} in {v}.items():",
                *self.value("string", key, i + "        "),
                *self.value(schema["values"], item, i + "        "),
                f"{i}a(b'\\x00')",
            ]
        if kind == "union":
            return self.union(schema, v, i)
        raise Unsupported(f"type {kind}")

    def union(self, branches: list, v: str, i: str) -> list[str]:
        kinds = [_type_name(self.resolve(b)) for b in branches]
        if len(set(kinds)) != len(kinds):
            raise Unsupported(f"a union with two branches of one type: {kinds}")
        if "record" in kinds and "map" in kinds:
            raise Unsupported("a union of a record and a map (both dicts)")
        if "int" in kinds and "long" in kinds:
            raise Unsupported("a union of int and long")
        numbers = [k for k in kinds if k in ("int", "long", "double")]
        if "double" in numbers and numbers[0] == "double" and len(numbers) > 1:
            # fastavro writes an int as the double when the double comes first.
            raise Unsupported("a union with double before int or long")
        tests = {
            "null": f"{v} is None",
            "boolean": f"({v} is True or {v} is False)",
            "int": f"type({v}) is int",
            "long": f"type({v}) is int",
            "double": f"type({v}) is float",
            "string": f"type({v}) is str",
            "bytes": f"type({v}) is bytes",
            "array": f"type({v}) is list",
            # fastavro reads a dict with a "-type" key in a union as naming its branch.
            "record": f"(type({v}) is dict and '-type' not in {v})",
            "map": f"(type({v}) is dict and '-type' not in {v})",
        }
        lines = []
        for index, (branch, kind) in enumerate(zip(branches, kinds, strict=True)):
            if kind not in tests:
                raise Unsupported(f"type {kind} in a union")
            lines.append(f"{i}{'if' if index == 0 else 'elif'} {tests[kind]}:")
            lines.append(f"{i}    a({zigzag(index)!r})")
            if kind != "null":
                lines += self.value(branch, v, i + "    ")
        lines.append(f"{i}else: raise F")
        return lines


def compile_writer(parsed: dict) -> Callable[[dict], bytes] | None:
    """A function writing a record of this (fastavro-parsed, logical types stripped) schema as
    Avro binary, raising for a record it leaves to fastavro; None for a schema it does not handle."""
    write_record = _Compiler.build(
        parsed,
        "writer",
        lambda compiler: {"F": Fallback, "L": _long, "S": _SMALL, "Z": _zigzag_cached, "D": _DOUBLE, "K": compiler.constants},
    )
    if write_record is None:
        return None

    def write(record: dict) -> bytes:
        parts: list[bytes] = []
        write_record(record, parts.append)
        return b"".join(parts)

    return write
