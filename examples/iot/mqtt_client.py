"""A paho-mqtt client driven by trio: no network thread, reads and writes on socket
readiness, reconnects with backoff.

paho's "external event loop" interface does the protocol: ``loop_read`` parses
what arrived (calling ``on_message``/``on_publish``), ``loop_write`` sends what
is queued, ``loop_misc`` keeps the connection alive.  :class:`TrioMqttClient`
calls them from three trio tasks per connection -- a reader that waits until
the socket is readable, a writer woken by paho's ``on_socket_register_write``
callback when packets are queued, and a once-a-second keepalive -- so every
paho call happens in the trio thread and nothing needs a lock.

After each readable wake the reader hands the packets it parsed to
``on_read_batch`` and awaits it before reading again: a slow consumer stops
reading, and TCP pushes back to the MQTT broker.

paho reads a packet with three or four ``recv`` calls (type byte, length bytes,
body) and writes each packet with its own ``send``.  :class:`BufferedClient`
gives paho a :class:`BufferedSocket` instead (by overriding paho's socket
factory, ``Client._create_socket``): ``recv`` is served from one large read,
``send`` appends to an output buffer that the writer task flushes with one
system call per wake.  That is most of the per-message cost saved at thousands
of messages per second.

The connection is run in a loop: when it is lost (the broker stopped, a socket
error, a refused CONNACK) the client waits with exponential backoff and
reconnects with the same client id; with ``clean_session=False`` the broker
keeps the session and paho re-sends unacknowledged publishes.  ``generation``
counts successful connections, so a caller can tell which connection a
received message came in on (a PUBACK belongs to that connection only).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
import trio
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import MQTTErrorCode

log = structlog.get_logger("examples.iot.mqtt")

# Bytes read from the socket at once by BufferedSocket: many small MQTT packets.
RECV_BYTES: Final = 32 * 1024


class BufferedSocket:
    """A connected non-blocking socket with user-space read and write buffers.

    ``recv(n)`` returns up to ``n`` buffered bytes, reading ``RECV_BYTES`` from
    the socket when the buffer is empty (BlockingIOError when nothing is there,
    ``b""`` at end of stream).  ``send`` only buffers; :meth:`flush` writes.
    Other attributes (``fileno``, ``setblocking``...) are the socket's.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._data = b""
        self._position = 0
        self._output = bytearray()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, bufsize: int) -> bytes:
        if self._position >= len(self._data):
            self._data = self.sock.recv(RECV_BYTES)
            self._position = 0
        chunk = self._data[self._position : self._position + bufsize]
        self._position += len(chunk)
        return chunk

    def buffered(self) -> bool:
        """True when bytes already read wait to be parsed."""
        return self._position < len(self._data)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self._output += data
        return len(data)

    def flush(self) -> bool:
        """Write what is buffered; True once all of it is written.  Raises OSError
        (the connection is broken)."""
        output = self._output
        while output:
            try:
                sent = self.sock.send(output)
            except BlockingIOError:
                return False
            del output[:sent]
        return True

    def close(self) -> None:
        try:
            self.flush()  # a DISCONNECT written just before paho closes
        except OSError:
            pass
        self.sock.close()


class BufferedClient(Client):
    """A paho Client whose socket is a :class:`BufferedSocket` (see the module doc)."""

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        assert isinstance(sock, socket.socket), "plain TCP only"
        return BufferedSocket(sock)


BACKOFF_MIN_S_DEFAULT: Final = 0.05
BACKOFF_MAX_S_DEFAULT: Final = 2.0
KEEPALIVE_S_DEFAULT: Final = 30
# Packets parsed per readable wake at most, so one busy connection does not keep
# the others (and the caller's tasks) from running.
READS_PER_WAKE_MAX: Final = 256
MISC_INTERVAL_S: Final = 1.0


def split_address(address: str, default_port: int = 1883) -> tuple[str, int]:
    """``"HOST:PORT"`` as (host, port).  Raises ValueError for a bad port."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    return host, int(port)


class TrioMqttClient:
    """Runs one paho :class:`Client` under trio (see the module docstring).

    ``on_connected``: called (synchronously) after each accepted CONNACK, e.g. to
    subscribe.  ``on_read_batch``: awaited after each batch of parsed packets.
    The paho client's ``on_message``/``on_publish`` callbacks are the caller's;
    set them before :meth:`run`, through :meth:`set_on_message` /
    :meth:`set_on_publish` so that the reader can count packets.
    """

    def __init__(
        self,
        client: BufferedClient,
        host: str,
        port: int,
        *,
        name: str,
        keepalive_s: int = KEEPALIVE_S_DEFAULT,
        backoff_min_s: float = BACKOFF_MIN_S_DEFAULT,
        backoff_max_s: float = BACKOFF_MAX_S_DEFAULT,
        on_connected: Callable[[], None] | None = None,
        on_read_batch: Callable[[], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.name = name
        self.keepalive_s = keepalive_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.on_connected = on_connected
        self.on_read_batch = on_read_batch
        self._rng = rng if rng is not None else random.Random()
        self.generation = 0  # accepted connections so far
        self.reconnects = 0  # connections lost and retried
        self.connected = False
        self.packets_read = 0
        self._closing = False
        self._connected_event = trio.Event()
        self._write_wanted = trio.Event()
        self._connection_scope: trio.CancelScope | None = None
        self._connection_done = trio.Event()
        self._socket: BufferedSocket | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = None

    def set_on_message(self, callback: Callable[[MQTTMessage], None]) -> None:
        def on_message(_client: Client, _userdata: Any, message: MQTTMessage) -> None:
            self.packets_read += 1
            callback(message)

        self.client.on_message = on_message

    def set_on_publish(self, callback: Callable[[int], None]) -> None:
        def on_publish(_client: Client, _userdata: Any, mid: int, *_rest: Any) -> None:
            self.packets_read += 1
            callback(mid)

        self.client.on_publish = on_publish

    # -- paho callbacks (all run in the trio thread, inside a paho call) --------------------

    def _on_connect(
        self, _client: Client, _userdata: Any, _flags: Any, reason: Any, *_: Any
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("mqtt connect refused", client=self.name, reason=str(reason))
            self._end_connection()
            return
        self.generation += 1
        self.connected = True
        self._connected_event.set()
        log.info("mqtt connected", client=self.name, generation=self.generation)
        if self.on_connected is not None:
            self.on_connected()

    def _on_disconnect(self, _client: Client, _userdata: Any, *_: Any) -> None:
        self._end_connection()

    def _on_socket_open(self, _client: Client, _userdata: Any, sock: Any) -> None:
        assert isinstance(sock, BufferedSocket)
        self._socket = sock
        self._write_wanted.set()

    def _on_socket_close(self, _client: Client, _userdata: Any, sock: Any) -> None:
        # Wake any task waiting on the socket before paho closes it.
        if isinstance(sock, BufferedSocket):
            trio.lowlevel.notify_closing(sock.sock)
        self._end_connection()

    def _on_register_write(self, _client: Client, _userdata: Any, _sock: Any) -> None:
        self._write_wanted.set()

    def _end_connection(self) -> None:
        if self.connected:
            self.connected = False
            self._connected_event = trio.Event()
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    # -- running ---------------------------------------------------------------------------------

    def closing(self) -> bool:
        """True once :meth:`disconnect` was called: no more reconnects."""
        return self._closing

    async def wait_connected(self) -> None:
        """Return once a connection has been accepted (at once if it is up)."""
        while not self.connected:
            await self._connected_event.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve the connection, reconnect with backoff when it is lost;
        until :meth:`disconnect` or cancellation.  Reports started at once (the
        first connection may still be pending: :meth:`wait_connected`)."""
        task_status.started()
        backoff_s = self.backoff_min_s
        first = True
        while not self.closing():
            try:
                if first:
                    self.client.connect(self.host, self.port, keepalive=self.keepalive_s)
                else:
                    self.client.reconnect()
            except OSError as error:
                log.info("mqtt connect failed", client=self.name, error=str(error))
            else:
                first = False
                generation = self.generation
                await self._serve_connection()
                if self.generation != generation:
                    backoff_s = self.backoff_min_s  # it had been up: start again quickly
            if self.closing():
                return
            self.reconnects += 1
            await trio.sleep(backoff_s * (0.5 + self._rng.random()))
            backoff_s = min(backoff_s * 2, self.backoff_max_s)

    async def _serve_connection(self) -> None:
        self._connection_done = trio.Event()
        with trio.CancelScope() as scope:
            self._connection_scope = scope
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop)
                    nursery.start_soon(self._write_loop)
                    nursery.start_soon(self._misc_loop)
            finally:
                self._connection_scope = None
                self.connected = False
                self._connection_done.set()

    async def _read_loop(self) -> None:
        client = self.client
        while True:
            sock = self._socket
            if sock is None or client.socket() is None:
                return self._end_connection()
            try:
                if sock.buffered():
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return self._end_connection()
            for _ in range(READS_PER_WAKE_MAX):
                before = self.packets_read
                if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
                    return self._end_connection()
                if self.packets_read == before:
                    break
            if self.on_read_batch is not None:
                await self.on_read_batch()

    async def _write_loop(self) -> None:
        client = self.client
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            while True:
                sock = self._socket
                if sock is None or client.socket() is None:
                    return self._end_connection()
                if client.want_write():
                    if client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return self._end_connection()
                    if client.socket() is None:
                        return self._end_connection()
                try:
                    flushed = sock.flush()
                except OSError as error:
                    log.info("mqtt connection broken", client=self.name, error=str(error))
                    return self._end_connection()
                if flushed and not client.want_write():
                    break
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    return self._end_connection()

    async def _misc_loop(self) -> None:
        while True:
            await trio.sleep(MISC_INTERVAL_S)
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return self._end_connection()

    async def disconnect(self, timeout_s: float = 5.0) -> None:
        """Send DISCONNECT (the session stays on the broker when it is persistent)
        and stop reconnecting; gives up waiting after ``timeout_s``."""
        self._closing = True
        if not self.connected:
            if self._connection_scope is not None:
                self._connection_scope.cancel()
            return
        self.client.disconnect()
        with trio.move_on_after(timeout_s):
            await self._connection_done.wait()
        if self._connection_scope is not None:
            self._connection_scope.cancel()
