"""Writing consumed records for ``tail``: formatted bytes, JSON lines or a terminal view.

Every writer takes a whole fetched batch (``write_batch``), so the per-record
work is one renderer call and the I/O is one ``write`` plus one ``flush`` per
batch (the flush keeps ``tail | grep`` live).

* :class:`BytesWriter`: a compiled kcat-style format (``-f``, ``--raw`` and the
  plain default when stdout is not a terminal); bytes go out exactly as stored.
* :class:`JsonWriter`: the JSON-lines envelope (``--json``).
* :class:`TerminalWriter`: coloured, human-readable lines through rich, used only
  when stdout is a terminal and no format was asked for.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Final, Protocol

from client.cli.envelope import encode_records
from client.cli.record_format import RecordView, Renderer, compile_format

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# Piped default: partition:offset, key, value, tab-separated (cut/awk friendly).
PLAIN_FORMAT: Final = "%p:%o\\t%k\\t%s\\n"
RAW_FORMAT: Final = "%s\\n"
PREVIEW_CHARACTERS_MAX: Final = 4096  # a terminal line longer than this helps no one


class RecordWriter(Protocol):
    def write_batch(self, topic: str, partition: int, records: Sequence[RecordView]) -> None: ...


class BytesWriter:
    """Renders each record with a compiled format; one write per batch."""

    def __init__(self, stream: IO[bytes], format_text: str, *, null: bytes = b"") -> None:
        self._stream = stream
        self._format = compile_format(format_text, null=null)

    def write_batch(self, topic: str, partition: int, records: Sequence[RecordView]) -> None:
        render: Renderer = self._format.for_partition(topic, partition)
        self._stream.write(b"".join(map(render, records)))
        self._stream.flush()


class JsonWriter:
    """The JSON-lines envelope; one encode call and one write per batch."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def write_batch(self, topic: str, partition: int, records: Sequence[RecordView]) -> None:
        self._stream.write(encode_records(records, topic, partition))
        self._stream.flush()


def _preview(data: bytes | None) -> str:
    if data is None:
        return "∅"
    text = bytes(data[:PREVIEW_CHARACTERS_MAX]).decode("utf-8", "backslashreplace")
    return text if len(data) <= PREVIEW_CHARACTERS_MAX else text + "…"


class TerminalWriter:
    """One coloured line per record: position, time, key, value, headers."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def line(self, partition: int, record: RecordView) -> Text:
        from rich.text import Text

        moment = datetime.datetime.fromtimestamp(record.timestamp_ms / 1000)
        text = Text.assemble(
            (f"{partition}:{record.offset}", "bold cyan"),
            " ",
            (moment.isoformat(sep=" ", timespec="milliseconds"), "dim"),
            " ",
        )
        if record.key is not None:
            text.append(_preview(record.key), "bold yellow")
            text.append(" ")
        text.append(_preview(record.value), "italic dim" if record.value is None else "")
        if record.headers:
            rendered = ", ".join(f"{name}={_preview(value)}" for name, value in record.headers)
            text.append(f"  [{rendered}]", "magenta")
        return text

    def write_batch(self, topic: str, partition: int, records: Sequence[RecordView]) -> None:
        for record in records:
            self._console.print(self.line(partition, record))
