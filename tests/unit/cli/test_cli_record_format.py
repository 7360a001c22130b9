"""Unit tests for client/cli/record_format.py: kcat-style tokens, escapes and errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import click
import pytest

from client.cli.record_format import Renderer, compile_format, render_headers


def compile_for(
    text: str, topic: str = "orders", partition: int = 3, null: bytes = b""
) -> Renderer:
    return compile_format(text, null=null).for_partition(topic, partition)


@dataclass
class Record:
    offset: int = 42
    timestamp_ms: int = 1_714_564_800_000
    key: bytes | None = b"user-7"
    value: bytes | None = b"hello"
    headers: Sequence[tuple[str, bytes]] = field(default_factory=list)


def test_every_token() -> None:
    """Proves each token renders the matching record field."""
    record = Record(headers=[("a", b"1"), ("b", b"two")])
    render = compile_for("%t|%p|%o|%T|%k|%s|%K|%S|%h")
    assert render(record) == b"orders|3|42|1714564800000|user-7|hello|6|5|a=1,b=two"


def test_escapes_and_literal_percent() -> None:
    """Proves \\n \\t \\r \\\\ and %% produce the literal characters."""
    render = compile_for("%o\\t100%%\\\\\\r\\n")
    assert render(Record()) == b"42\t100%\\\r\n"


def test_literal_text_with_percent_signs_survives_the_bytes_template() -> None:
    """Proves literal text is escaped for the %-template (no accidental substitution)."""
    assert compile_for("%%d %%s %s")(Record()) == b"%d %s hello"


def test_null_key_and_value() -> None:
    """Proves null keys/values print as the null text and their lengths as -1."""
    record = Record(key=None, value=None)
    assert compile_for("[%k][%s] %K %S")(record) == b"[][] -1 -1"
    assert compile_for("%k %s", null=b"NULL")(record) == b"NULL NULL"


def test_empty_key_differs_from_null_in_lengths() -> None:
    """Proves an empty key has length 0 where a null key has -1."""
    assert compile_for("%K")(Record(key=b"")) == b"0"


def test_binary_values_are_written_verbatim() -> None:
    """Proves non-UTF-8 bytes pass through untouched."""
    assert compile_for("%s")(Record(value=b"\xff\x00\xfe")) == b"\xff\x00\xfe"


def test_unicode_literals_and_topic() -> None:
    """Proves non-ASCII literal text and topic names are written as UTF-8."""
    assert compile_for("→ %t", topic="prüfung")(Record()) == "→ prüfung".encode()


def test_constant_format() -> None:
    """Proves a format with no tokens renders its literal text."""
    assert compile_for("tick\\n")(Record()) == b"tick\n"


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_specialised_arities_agree(count: int) -> None:
    """Proves the 1-, 2- and N-field fast paths render the same thing."""
    text = " ".join(["%o"] * count)
    assert compile_for(text)(Record()) == b" ".join([b"42"] * count)


def test_headers_rendering() -> None:
    """Proves headers render as name=value joined by commas, empty when none."""
    assert render_headers([]) == b""
    assert render_headers([("x", b""), ("y", b"=")]) == b"x=,y=="


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("%z", "unknown token '%z'"),
        ("%", "lone '%'"),
        ("abc\\", "lone '\\\\'"),
        ("\\q", "unknown escape '\\q'"),
    ],
)
def test_bad_formats(text: str, why: str) -> None:
    """Proves unknown tokens/escapes and dangling % or \\ are one-line BadParameter errors."""
    with pytest.raises(click.BadParameter) as caught:
        compile_format(text)
    assert why in caught.value.message
    assert "\n" not in caught.value.message


def test_escaped_percent_is_never_a_token() -> None:
    """Proves %%o prints a literal '%o' and a '%' in a topic name is not a template slot."""
    assert compile_for("%%o %t", topic="a%db")(Record()) == b"%o a%db"


def test_renderers_are_cached_per_partition() -> None:
    """Proves each partition gets its own renderer with %p baked in, built once."""
    compiled = compile_format("%p:%o")
    assert compiled.for_partition("t", 0)(Record()) == b"0:42"
    assert compiled.for_partition("t", 9)(Record()) == b"9:42"
    assert compiled.for_partition("t", 0) is compiled.for_partition("t", 0)


def test_timestamp_modifiers() -> None:
    """Proves %T{iso} prints ISO 8601 UTC with milliseconds and %T{PATTERN} a strftime
    pattern (UTC), while a bare %T stays milliseconds."""
    record = Record(timestamp_ms=1_714_564_800_123)
    assert compile_for("%T{iso}|%T{%Y/%m/%d %H}|%T")(record) == (
        b"2024-05-01T12:00:00.123Z|2024/05/01 12|1714564800123"
    )


def test_hex_and_base64_modifiers() -> None:
    """Proves %k{hex}, %s{hex}, %k{base64} and %s{base64} encode the bytes, and a null
    key or value still prints the null marker."""
    record = Record(key=b"\x00\xff", value=b"hi")
    assert compile_for("%k{hex} %s{hex} %k{base64} %s{base64}")(record) == b"00ff 6869 AP8= aGk="
    nulls = Record(key=None, value=None)
    assert compile_for("%k{hex}|%s{base64}", null=b"-")(nulls) == b"-|-"


@pytest.mark.parametrize(
    ("text", "why"),
    [("%T{", "no closing brace"), ("%T{}", "is empty"), ("%s{rot13}", "use one of hex, base64")],
)
def test_bad_modifier_is_refused(text: str, why: str) -> None:
    """Proves an unclosed, empty or unknown modifier is a one-line format error."""
    with pytest.raises(click.BadParameter, match=why):
        compile_format(text)


def test_tokens_without_modifiers_keep_a_literal_brace() -> None:
    """Proves a brace after a token that takes no modifier (%o) is literal text."""
    assert compile_for("%o{x}")(Record(offset=7)) == b"7{x}"
