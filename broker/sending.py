"""Turning replies into frames, and putting frames on a socket.

A reply becomes a :class:`Frame`: the encoded response head, then the record
bytes.  Small record payloads (at most INLINE_REGION_BYTES_MAX, a live
consumer's usual fetch) are read into the frame's bytes -- from memory when the
region is the log's cached latest append, else from the page cache -- so the
answer leaves in one ``send``, as one segment, and the client wakes once.
Larger ones keep their file regions and go out with ``os.sendfile`` straight
from the segment files.

:func:`write_now` never waits (what the socket takes now); :func:`send_frame`
waits for writability as long as it has to.  Both raise OSError when the peer
is gone; a region whose file was truncated under it raises ClientGone (the frame
can no longer be completed, so the connection must close).
"""

from __future__ import annotations

import errno
import os
from typing import Final

import trio

from broker.response_slots import Frame, Reply
from broker.storage.file_handle import CachedRegion, FileRegion
from client.errors import StorageError
from client.protocol.connection import IncomingRequest, ServerConnection

# Fetch responses with at most this many record bytes are read into Python and
# sent with their head in one send() (one segment, one wake-up on the client);
# larger ones go out by os.sendfile.  16 KiB: a copy that small costs less than
# the second system call and the second wake-up it saves.
INLINE_REGION_BYTES_MAX: Final = 16 * 1024


class ClientGone(Exception):
    """Internal: the connection must close now (logged where raised)."""


def reply_frame(request: IncomingRequest, reply: Reply, *, more: bool = False) -> Frame:
    """``reply`` as a frame answering ``request``; the reply's regions now belong
    to the frame (released once sent, or read in and released here).  ``more``:
    another answer to the same request follows (a fetch stream).  Raises
    ClientGone when a small region's file was truncated under it."""
    regions, reply.regions = reply.regions, []
    head = ServerConnection.encode_response(
        int(request.api_key),
        request.api_version,
        request.correlation_id,
        reply.body,
        sum([region.length for region in regions]) if regions else 0,
        more=more,
    )
    if not regions:
        return Frame(head, [])
    if sum([region.length for region in regions]) > INLINE_REGION_BYTES_MAX:
        return Frame(head, regions)
    try:
        return Frame(b"".join([head, *(read_region(region) for region in regions)]), [])
    finally:
        for region in regions:
            region.release()


def read_region(region: FileRegion) -> bytes:
    """A small region's bytes (from memory or the page cache).  Raises ClientGone
    when the file was truncated under it."""
    try:
        return region.read_bytes()
    except StorageError as error:
        raise ClientGone(str(error)) from error


def write_now(descriptor: int, data: bytes | memoryview) -> int:
    """Write what the socket takes without waiting: the bytes written (0 when its
    buffer is full).  Raises OSError (peer gone)."""
    try:
        return os.write(descriptor, data)
    except BlockingIOError:
        return 0


async def send_frame(sock: trio.socket.SocketType, frame: Frame) -> None:
    """Send the rest of ``frame``: its bytes, then its regions.  Raises OSError
    (peer gone), ClientGone (a region's file was truncated under it)."""
    frame.started = True
    await send_all(sock, frame.data)
    frame.data = b""
    for region in frame.regions:
        if isinstance(region, CachedRegion):  # in memory, no file to send from
            await send_all(sock, read_region(region))
        else:
            await sendfile_all(sock, region)


async def send_all(sock: trio.socket.SocketType, data: bytes | memoryview) -> None:
    """Send every byte of ``data``.  Raises OSError (peer gone)."""
    view = memoryview(data)
    sent = 0
    while sent < len(view):  # every send moves >= 1 byte or raises
        sent += await sock.send(view[sent:])


async def sendfile_all(sock: trio.socket.SocketType, region: FileRegion) -> None:
    """``os.sendfile`` a file region to a non-blocking socket, waiting for
    writability on EAGAIN.  Raises OSError (peer gone), ClientGone when the file
    was truncated under the region."""
    sent = 0
    out_descriptor = sock.fileno()
    while sent < region.length:  # every call sends >= 1 byte, waits, or raises
        try:
            count = os.sendfile(
                out_descriptor, region.descriptor, region.position + sent, region.length - sent
            )
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as error:
            if error.errno == errno.EINTR:
                continue
            raise
        if count == 0:
            raise ClientGone(f"segment file ended {region.length - sent} bytes early")
        sent += count
        await trio.lowlevel.checkpoint()
