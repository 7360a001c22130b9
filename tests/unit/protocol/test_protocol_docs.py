"""Tests that docs/protocol.md still matches the code it specifies."""

from __future__ import annotations

import pytest
from protocol_doc_tables import (
    ROOT,
    all_tables,
    error_table,
    example_request,
    hex_lines,
    worked_example,
)

from client.protocol.connection import ServerConnection
from client.protocol.messages import ErrorResponse, ProduceRequest, encoder, request_decoder

DOC = (ROOT / "docs" / "protocol.md").read_text()
TABLES = all_tables()


@pytest.mark.parametrize("name", list(TABLES))
def test_every_message_table_is_in_the_spec(name: str) -> None:
    """Proves the spec's field table for each message is exactly what messages.py defines
    (regenerate with tests/unit/protocol/protocol_doc_tables.py)."""
    assert f"#### {name}\n\n{TABLES[name]}\n" in DOC


def test_error_code_table_is_in_the_spec() -> None:
    """Proves the spec's error table lists every code of client/errors.py as it is now."""
    assert error_table() in DOC


def test_worked_example_bytes_are_in_the_spec() -> None:
    """Proves the hex of the worked Produce example is what the codec produces today."""
    request, response = worked_example()
    assert hex_lines(request) in DOC
    assert hex_lines(response) in DOC
    assert encoder.encode(ErrorResponse(13)).hex(" ") in DOC


def test_worked_example_request_decodes() -> None:
    """Proves the example's request bytes decode back to the request the spec describes."""
    request, _ = worked_example()
    server = ServerConnection()
    server.receive_data(request + bytes(74))
    incoming = server.next_request()
    assert incoming is not None and not hasattr(incoming, "error")
    body = request_decoder.decode(request[18:])
    assert isinstance(body, ProduceRequest) and body == example_request()


def test_spec_links_the_record_format() -> None:
    """Proves the spec points at the record-batch format for payload contents."""
    assert "(record-format.md)" in DOC
