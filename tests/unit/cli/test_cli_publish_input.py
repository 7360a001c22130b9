"""Unit tests for client/cli/publish_input.py: line splitting, headers, null marker."""

from __future__ import annotations

import click
import pytest

from client.cli.publish_input import (
    PublishRecord,
    compile_splitter,
    parse_header,
    strip_newline,
    unescape_option,
)


def test_plain_lines_become_values_with_no_key() -> None:
    """Proves without options the whole line is the value and the key is null."""
    split = compile_splitter()
    assert split(b"hello world") == PublishRecord(None, b"hello world", ())


def test_fixed_key() -> None:
    """Proves -k gives every record the same key."""
    split = compile_splitter(fixed_key=b"k1")
    assert split(b"v") == PublishRecord(b"k1", b"v", ())


def test_key_separator_splits_at_first_occurrence() -> None:
    """Proves the key is before the first separator and the rest (separators too) is the value."""
    split = compile_splitter(key_separator=b":")
    assert split(b"user-1:a:b") == PublishRecord(b"user-1", b"a:b", ())
    assert split(b":value") == PublishRecord(b"", b"value", ())
    assert split(b"key:") == PublishRecord(b"key", b"", ())


def test_multi_byte_separator() -> None:
    """Proves a separator longer than one byte works."""
    assert compile_splitter(key_separator=b"=>")(b"a=>b") == PublishRecord(b"a", b"b", ())


def test_line_without_separator_has_null_key() -> None:
    """Proves a line lacking the separator is all value with a null key."""
    assert compile_splitter(key_separator=b"\t")(b"no tab") == PublishRecord(None, b"no tab", ())


def test_null_marker_for_values_and_keys() -> None:
    """Proves the null marker turns an exact-match value or key into None, and nothing else."""
    split = compile_splitter(null_marker=b"NULL")
    assert split(b"NULL").value is None
    assert split(b"NULLX").value == b"NULLX"
    keyed = compile_splitter(key_separator=b":", null_marker=b"NULL")
    assert keyed(b"NULL:v") == PublishRecord(None, b"v", ())
    assert keyed(b"k:NULL") == PublishRecord(b"k", None, ())
    assert keyed(b"NULL") == PublishRecord(None, None, ())


def test_fixed_key_equal_to_null_marker_is_null() -> None:
    """Proves -k with the null marker's text means a null key."""
    assert compile_splitter(fixed_key=b"-", null_marker=b"-")(b"v").key is None


def test_headers_are_attached_to_every_record() -> None:
    """Proves -H headers appear on every record, in order."""
    headers = [("a", b"1"), ("b", b"2")]
    split = compile_splitter(key_separator=b":", headers=headers)
    assert split(b"k:v").headers == (("a", b"1"), ("b", b"2"))
    assert split(b"v").headers == (("a", b"1"), ("b", b"2"))


def test_conflicting_key_options_are_rejected() -> None:
    """Proves -k together with --key-separator is a usage error."""
    with pytest.raises(click.BadParameter, match="not both"):
        compile_splitter(key_separator=b":", fixed_key=b"k")


def test_empty_separator_is_rejected() -> None:
    """Proves an empty key separator is a usage error."""
    with pytest.raises(click.BadParameter, match="must not be empty"):
        compile_splitter(key_separator=b"")


def test_parse_header() -> None:
    """Proves name=value splits at the first '=' and allows empty or '='-holding values."""
    assert parse_header("trace=abc") == ("trace", b"abc")
    assert parse_header("empty=") == ("empty", b"")
    assert parse_header("eq=a=b") == ("eq", b"a=b")
    assert parse_header("ü=ß") == ("ü", "ß".encode())


@pytest.mark.parametrize("text", ["novalue", "=value", ""])
def test_bad_headers(text: str) -> None:
    """Proves a header without '=' or without a name is a BadParameter."""
    with pytest.raises(click.BadParameter, match="expected name=value"):
        parse_header(text)


def test_strip_newline_removes_exactly_one_newline() -> None:
    """Proves only the final \\n is removed, so \\r and inner newlines stay data."""
    assert strip_newline(b"a\n") == b"a"
    assert strip_newline(b"a\r\n") == b"a\r"
    assert strip_newline(b"a") == b"a"
    assert strip_newline(b"\n\n") == b"\n"


def test_unescape_option() -> None:
    """Proves \\t \\n \\r \\\\ escapes in option values become the bytes they name."""
    assert unescape_option("\\t") == b"\t"
    assert unescape_option("a\\\\b") == b"a\\b"
    assert unescape_option("::") == b"::"
    with pytest.raises(click.BadParameter, match="unknown escape"):
        unescape_option("\\x")
