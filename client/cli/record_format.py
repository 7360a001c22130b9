"""kcat-style output formats for ``tail -f FORMAT``, compiled once per command.

Tokens::

    %t topic        %p partition     %o offset        %T timestamp (ms since the epoch)
    %k key          %s value         %K key length    %S value length (-1 when null)
    %h headers as name=value,name=value               %% a literal percent sign
    \\n newline     \\t tab           \\r carriage return \\\\ a backslash

Modifiers in braces right after a token::

    %T{iso}         the timestamp in ISO 8601, UTC, with milliseconds
    %T{%Y-%m-%d}    the timestamp through a strftime pattern (UTC)
    %k{hex} %s{hex}         key / value as lowercase hex
    %k{base64} %s{base64}   key / value as base64

:func:`compile_format` parses the format once; ``for_partition(topic, partition)``
then turns it into one bytes template (``%t`` and ``%p`` baked in as text,
``%b`` / ``%d`` slots for the rest) and a tuple of small field getters, so
rendering a record is one call: ``template % (getter(record), ...)``, done by
CPython's bytes formatting in C.
Output is bytes: keys and values are written to stdout exactly as stored.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Final, Protocol

import click


class RecordView(Protocol):
    """What the renderers read from a consumed record (client.consumer.ConsumerRecord fits).

    Topic and partition are not per-record fields: consumers hand records out in
    per-partition lists, so they are bound once per partition instead."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


Renderer = Callable[[RecordView], bytes]
Getter = Callable[[RecordView], object]

_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_TOKENS: Final = "tpoTksKSh"
# Tokens that take a {modifier}, and the modifiers they take (None: any strftime pattern).
_MODIFIERS: Final[dict[str, tuple[str, ...] | None]] = {
    "T": None,
    "k": ("hex", "base64"),
    "s": ("hex", "base64"),
}
_FORMAT_HELP: Final = (
    "tokens are %t %p %o %T %k %s %K %S %h %%, modifiers %T{iso} %T{STRFTIME} "
    "%k{hex} %s{base64} ..., escapes \\n \\t \\r \\\\"
)


def render_headers(headers: Sequence[tuple[str, bytes]]) -> bytes:
    """``name=value,name=value`` (names UTF-8, values as stored)."""
    return b",".join([name.encode() + b"=" + value for name, value in headers])


def _timestamp_text(pattern: str) -> Callable[[int], bytes]:
    """Milliseconds since the epoch -> bytes, in ISO 8601 (``iso``) or a strftime pattern (UTC)."""
    utc = datetime.UTC
    if pattern == "iso":
        return lambda ms: (
            datetime.datetime.fromtimestamp(ms / 1000, utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
            .encode()
        )
    return lambda ms: datetime.datetime.fromtimestamp(ms / 1000, utc).strftime(pattern).encode()


def _encoded(encoding: str) -> Callable[[bytes], bytes]:
    return binascii.hexlify if encoding == "hex" else base64.b64encode


def _modified_getter(token: str, modifier: str, null: bytes) -> tuple[bytes, Getter]:
    """The template slot and getter for a token with a ``{modifier}``."""
    if token == "T":
        text = _timestamp_text(modifier)
        return b"%b", lambda record: text(record.timestamp_ms)
    encode = _encoded(modifier)
    if token == "k":
        return b"%b", lambda record: null if record.key is None else encode(record.key)
    assert token == "s", token
    return b"%b", lambda record: null if record.value is None else encode(record.value)


def _getter(token: str, null: bytes) -> tuple[bytes, Getter]:
    """The template slot and the getter for one per-record ``%`` token."""
    if token == "o":
        return b"%d", attrgetter("offset")
    if token == "T":
        return b"%d", attrgetter("timestamp_ms")
    if token == "k":
        return b"%b", lambda record: null if record.key is None else record.key
    if token == "s":
        return b"%b", lambda record: null if record.value is None else record.value
    if token == "K":
        return b"%d", lambda record: -1 if record.key is None else len(record.key)
    if token == "S":
        return b"%d", lambda record: -1 if record.value is None else len(record.value)
    assert token == "h", token
    return b"%b", lambda record: render_headers(record.headers)


def _bad(text: str, why: str) -> click.BadParameter:
    return click.BadParameter(f"bad format {text!r}: {why}; {_FORMAT_HELP}")


def _modifier(text: str, token: str, index: int) -> tuple[str, int]:
    """The ``{...}`` modifier of ``token`` starting at ``index`` ("" if none) and the
    index after it.  Raises click.BadParameter."""
    allowed = _MODIFIERS.get(token, ())
    if index >= len(text) or text[index] != "{" or allowed == ():
        return "", index
    close = text.find("}", index)
    if close < 0:
        raise _bad(text, f"'%{token}{{' has no closing brace")
    modifier = text[index + 1 : close]
    if allowed is None:
        if not modifier:
            raise _bad(text, f"'%{token}{{}}' is empty: use iso or a strftime pattern")
    elif modifier not in allowed:
        raise _bad(text, f"'%{token}{{{modifier}}}': use one of {', '.join(allowed)}")
    return modifier, close + 1


def _parse(text: str) -> list[tuple[bool, str]]:
    """The format as parts: ``(False, literal text)`` or ``(True, token letter)``, a
    token with a modifier as ``(True, "T{iso}")``."""
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char != "%" and char != "\\":
            literal.append(char)
            index += 1
            continue
        if index + 1 >= length:
            raise _bad(text, f"it ends with a lone {char!r}")
        follower = text[index + 1]
        index += 2
        if char == "\\":
            if follower not in _ESCAPES:
                raise _bad(text, f"unknown escape '\\{follower}'")
            literal.append(_ESCAPES[follower])
        elif follower == "%":
            literal.append("%")
        elif follower in _TOKENS:
            if literal:
                parts.append((False, "".join(literal)))
                literal = []
            modifier, index = _modifier(text, follower, index)
            parts.append((True, f"{follower}{{{modifier}}}" if modifier else follower))
        else:
            raise _bad(text, f"unknown token '%{follower}'")
    if literal:
        parts.append((False, "".join(literal)))
    return parts


class CompiledFormat:
    """A parsed format; :meth:`for_partition` gives the per-record renderer.

    ``%t`` and ``%p`` are constant within a partition, so they are baked into
    each partition's template as literal text (renderers are cached per partition).
    """

    def __init__(self, text: str, *, null: bytes = b"") -> None:
        self.text = text
        self.null = null
        self._parts = _parse(text)
        self._renderers: dict[tuple[str, int], Renderer] = {}

    def for_partition(self, topic: str, partition: int) -> Renderer:
        renderer = self._renderers.get((topic, partition))
        if renderer is None:
            renderer = self._renderers[(topic, partition)] = self._build(topic, partition)
        return renderer

    def _build(self, topic: str, partition: int) -> Renderer:
        template = bytearray()
        getters: list[Getter] = []
        for is_token, part in self._parts:
            if not is_token:
                template += part.encode().replace(b"%", b"%%")
            elif part == "t":
                template += topic.encode().replace(b"%", b"%%")
            elif part == "p":
                template += str(partition).encode()
            else:
                if len(part) > 1:  # "T{iso}": a token with a modifier
                    slot, getter = _modified_getter(part[0], part[2:-1], self.null)
                else:
                    slot, getter = _getter(part, self.null)
                template += slot
                getters.append(getter)
        return _bind(bytes(template), tuple(getters))


def compile_format(text: str, *, null: bytes = b"") -> CompiledFormat:
    """Parse a format string once.  ``null`` is what ``%k`` / ``%s`` print for a
    null key or value.

    Raises click.BadParameter on an unknown token or escape, or a dangling ``%`` / ``\\``.
    """
    return CompiledFormat(text, null=null)


def _bind(template: bytes, getters: tuple[Getter, ...]) -> Renderer:
    """The per-record function: specialised for 0, 1, 2 and N fields."""
    if not getters:
        constant = template % ()
        return lambda record: constant
    if len(getters) == 1:
        (first,) = getters
        return lambda record: template % (first(record),)
    if len(getters) == 2:
        first, second = getters
        return lambda record: template % (first(record), second(record))
    return lambda record: template % tuple([getter(record) for getter in getters])


if TYPE_CHECKING:  # click >= 8.2 types ParamType as a generic; 8.1 does not subscript
    _FormatParamBase = click.ParamType[str, object]
else:
    _FormatParamBase = click.ParamType


class FormatType(_FormatParamBase):
    """click parameter type for ``-f``: validates the format at parse time."""

    name = "format"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        text = str(value)
        try:
            compile_format(text)
        except click.BadParameter as error:
            self.fail(error.message, param, ctx)
        return text
