"""A schema-specific Avro binary reader: what fastavro's ``schemaless_reader`` reads from bytes
written with the codec's own (current) schema, at a fraction of its cost.

Every replica decodes each contact record (the store, the answers to writes and reads) and each
change event (the history); fastavro's per-call and per-value overhead made that a large share
of the service's CPU. ``compile_reader`` turns a parsed schema into Python source once, like
``avro_writer`` does for writing.

It is narrow in the same way: whatever it is not sure to read exactly as fastavro does (a
negative block count, a varint past 64 bits, a boolean byte other than 0 or 1, an int outside
32 bits, truncated data) raises, and the caller then reads the bytes with fastavro, which reads
them or says why not. A schema with something it does not handle compiles to None.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from contacts_streams.avro_writer import INT_MAX, INT_MIN, Fallback, SchemaCompiler, Unsupported, _type_name

_DOUBLE = struct.Struct("<d").unpack_from
_ULONG_END = 1 << 64


def _read_long(data: bytes, p: int) -> tuple[int, int]:
    """A zig-zag varint of more than one byte at ``p``: (value, position after it)."""
    shift = acc = 0
    while True:
        b = data[p]
        p += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise Fallback("a varint longer than a long")
    if acc >= _ULONG_END:
        raise Fallback("a varint past 64 bits")
    return (acc >> 1) ^ -(acc & 1), p


class _Compiler(SchemaCompiler):
    prefix = "r"

    def record_lines(self, function: str, schema: dict) -> list[str]:
        out = self.var()
        return [f"def {function}(D, p):", *self.fields(schema, out, "    "), f"    return {out}, p"]

    def fields(self, schema: dict, out: str, i: str) -> list[str]:
        lines, names = [], []
        for field in schema["fields"]:
            value = self.var()
            lines += self.value(field["type"], value, i)
            names.append(f"{field['name']!r}: {value}")
        lines.append(f"{i}{out} = {{{', '.join(names)}}}")
        return lines

    def long(self, v: str, i: str) -> list[str]:
        b = self.var()
        return [
            f"{i}{b} = D[p]",
            f"{i}p += 1",
            f"{i}if {b} > 127: {v}, p = RL(D, p - 1)",
            f"{i}else: {v} = ({b} >> 1) ^ -({b} & 1)",
        ]

    def value(self, schema: Any, v: str, i: str) -> list[str]:
        """Lines that read a value of ``schema`` at ``p`` of ``D`` into ``v`` and move ``p`` on."""
        schema = self.resolve(schema)
        kind = _type_name(schema)
        if kind == "null":
            return [f"{i}{v} = None"]
        if kind == "boolean":
            b = self.var()
            return [f"{i}{b} = D[p]", f"{i}p += 1", f"{i}if {b} > 1: raise F", f"{i}{v} = {b} == 1"]
        if kind == "long":
            return self.long(v, i)
        if kind == "int":
            return [*self.long(v, i), f"{i}if not {INT_MIN} <= {v} <= {INT_MAX}: raise F"]
        if kind == "double":
            return [f"{i}if p + 8 > len(D): raise F", f"{i}{v} = UD(D, p)[0]", f"{i}p += 8"]
        if kind in ("string", "bytes"):
            n = self.var()
            decode = ".decode()" if kind == "string" else ""
            return [
                *self.long(n, i),
                f"{i}if {n} < 0 or p + {n} > len(D): raise F",
                f"{i}{v} = D[p:p + {n}]{decode}",
                f"{i}p += {n}",
            ]
        if kind == "record":
            return self.inline_record(schema, v, i, lambda function: f"{i}{v}, p = {function}(D, p)")
        if kind in ("array", "map"):
            count, item, key = self.var(), self.var(), self.var()
            lines = [
                f"{i}{v} = {'[]' if kind == 'array' else '{}'}",
                f"{i}while True:",
                *self.long(count, i + "    "),
                f"{i}    if {count} == 0: break",
                f"{i}    if {count} < 0: raise F",
                f"{i}    for _ in range({count}):",
            ]
            if kind == "array":
                lines += self.value(schema["items"], item, i + "        ")
                lines.append(f"{i}        {v}.append({item})")
            else:
                lines += self.value("string", key, i + "        ")
                lines += self.value(schema["values"], item, i + "        ")
                lines.append(f"{i}        {v}[{key}] = {item}")
            return lines
        if kind == "enum":
            # fastavro reads an enum as its symbol; an index past the symbols is left to it.
            symbols = tuple(schema["symbols"])
            index = self.var()
            return [
                *self.long(index, i),
                f"{i}if not 0 <= {index} < {len(symbols)}: raise F",
                f"{i}{v} = {symbols!r}[{index}]",
            ]
        if kind == "union":
            index = self.var()
            lines = self.long(index, i)
            for at, branch in enumerate(schema):
                lines.append(f"{i}{'if' if at == 0 else 'elif'} {index} == {at}:")
                lines += self.value(branch, v, i + "    ")
            lines.append(f"{i}else: raise F")
            return lines
        raise Unsupported(f"type {kind}")


def compile_reader(parsed: dict) -> Callable[[bytes, int], tuple[dict, int]] | None:
    """A function reading a record of this (fastavro-parsed, logical types stripped) schema from
    bytes at an offset: (record, offset after it); it raises for bytes it leaves to fastavro.
    None for a schema it does not handle."""
    return _Compiler.build(parsed, "reader", lambda _compiler: {"F": Fallback, "RL": _read_long, "UD": _DOUBLE})
