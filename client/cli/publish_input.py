"""Turning ``publish`` input lines into records: key separator, fixed key, null marker.

One input line (without its trailing newline) becomes one :class:`PublishRecord`.
:func:`compile_splitter` picks the rule once per command and returns one small
function, so splitting a line is one call:

* ``--key-separator SEP``: key = the bytes before the first SEP, value = the rest.
  A line without SEP has a null key and the whole line as its value.
* ``-k KEY``: every record gets the fixed key KEY (``-k`` and ``--key-separator``
  are exclusive).
* ``--null-marker M``: a value (or key) that equals M exactly is null, not M.
* ``-H name=value`` (repeatable): headers on every record, parsed by :func:`parse_header`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import click

Header = tuple[str, bytes]


class PublishRecord(NamedTuple):
    """One record to publish.  ``timestamp_ms`` / ``partition`` None: chosen by the SDK."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[Header] = ()
    timestamp_ms: int | None = None
    partition: int | None = None


Splitter = Callable[[bytes], PublishRecord]


def strip_newline(line: bytes) -> bytes:
    """The line without its one trailing ``\\n`` (a ``\\r`` before it is data, kept)."""
    return line[:-1] if line.endswith(b"\n") else line


def parse_header(text: str) -> Header:
    """``name=value`` -> (name, value bytes).  The value may be empty or hold '='.

    Raises click.BadParameter when there is no '=' or the name is empty.
    """
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise click.BadParameter(f"bad header {text!r}: expected name=value")
    return name, value.encode()


def compile_splitter(
    *,
    key_separator: bytes | None = None,
    fixed_key: bytes | None = None,
    null_marker: bytes | None = None,
    headers: Sequence[Header] = (),
) -> Splitter:
    """The function that turns one line (no newline) into a PublishRecord.

    Raises click.BadParameter when the options conflict or the separator is empty.
    """
    if key_separator is not None and fixed_key is not None:
        raise click.BadParameter("use either -k/--key or --key-separator, not both")
    if key_separator == b"":
        raise click.BadParameter("--key-separator must not be empty")
    header_tuple = tuple(headers)
    if fixed_key is not None and null_marker is not None and fixed_key == null_marker:
        fixed_key = None
    if key_separator is None:
        key = fixed_key
        if null_marker is None:
            return lambda line: PublishRecord(key, line, header_tuple)
        marker = null_marker
        return lambda line: PublishRecord(key, None if line == marker else line, header_tuple)

    separator = key_separator

    def split(line: bytes) -> PublishRecord:
        head, found, tail = line.partition(separator)
        if not found:
            return PublishRecord(None, None if line == null_marker else line, header_tuple)
        return PublishRecord(
            None if head == null_marker else head,
            None if tail == null_marker else tail,
            header_tuple,
        )

    return split


def unescape_option(text: str) -> bytes:
    """An option value with \\t, \\n, \\r and \\\\ escapes (so ``--key-separator '\\t'``
    means a tab) -> bytes.  Raises click.BadParameter on an unknown escape."""
    out = bytearray()
    escapes = {"t": b"\t", "n": b"\n", "r": b"\r", "\\": b"\\"}
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            follower = text[index + 1]
            if follower not in escapes:
                raise click.BadParameter(f"unknown escape '\\{follower}' in {text!r}")
            out += escapes[follower]
            index += 2
            continue
        out += char.encode()
        index += 1
    return bytes(out)
