"""The metrics endpoint (broker/metrics/endpoint.py) on a real loopback socket:
what it answers, and what it does to garbage, slow, oversized and too many
clients.  Timeouts run on trio's autojump clock, so they take no real time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import h11
import pytest
import trio
import trio.testing

from broker.metrics.endpoint import (
    LINGER_TIMEOUT_S,
    REQUEST_HEAD_BYTES_MAX,
    REQUEST_HEAD_TIMEOUT_S,
    RESPONSE_SEND_TIMEOUT_S,
    SCRAPES_MAX,
    MetricsEndpoint,
)

BODY = b"# TYPE x gauge\nx 1.0\n"


class Renderer:
    """Stands for the registry: counts calls, returns ``body``."""

    def __init__(self, body: bytes = BODY) -> None:
        self.body = body
        self.accepts: list[str] = []

    async def __call__(self, accept: str) -> tuple[bytes, str]:
        self.accepts.append(accept)
        return self.body, "text/plain; version=0.0.4; charset=utf-8"


@pytest.fixture
def renderer() -> Renderer:
    return Renderer()


@pytest.fixture
async def endpoint(renderer: Renderer) -> AsyncIterator[MetricsEndpoint]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    served = MetricsEndpoint(listeners[0], renderer)
    async with trio.open_nursery() as nursery:
        await nursery.start(served.run)
        yield served
        nursery.cancel_scope.cancel()


async def connect(endpoint: MetricsEndpoint) -> trio.SocketStream:
    return await trio.open_tcp_stream(*endpoint.address)


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes (bounded by the test timeout)."""
    received = bytearray()
    while True:  # until EOF
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by the server
            return bytes(received)
        if not data:
            return bytes(received)
        received += data


async def exchange(
    stream: trio.SocketStream, client: h11.Connection, method: bytes, target: bytes
) -> tuple[h11.Response, bytes]:
    """One request on a kept-alive connection, through an h11 client."""
    request = h11.Request(
        method=method, target=target, headers=[(b"host", b"x"), (b"accept", b"text/plain")]
    )
    await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
    response: h11.Response | None = None
    body = bytearray()
    while True:  # until the response ends
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, bytes(body)


async def test_get_metrics_returns_the_scrape(
    endpoint: MetricsEndpoint, renderer: Renderer
) -> None:
    """GET /metrics (with a query string too) answers 200 with the rendered body and
    its content type, passing the Accept header; the connection stays open for
    the next scrape; HEAD answers the length without the body."""
    stream = await connect(endpoint)
    client = h11.Connection(h11.CLIENT)
    for target in (b"/metrics", b"/metrics?x=1"):
        response, body = await exchange(stream, client, b"GET", target)
        assert response.status_code == 200
        assert body == BODY
        assert dict(response.headers)[b"content-type"].startswith(b"text/plain")
        client.start_next_cycle()
    response, body = await exchange(stream, client, b"HEAD", b"/metrics")
    assert response.status_code == 200 and body == b""
    assert dict(response.headers)[b"content-length"] == str(len(BODY)).encode()
    assert renderer.accepts == ["text/plain"] * 3
    assert endpoint.scrapes == 3
    await stream.aclose()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", b"404"),
        (b"GET /metricsx HTTP/1.1\r\nhost: x\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc", b"405"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
    ],
)
async def test_other_requests_are_answered_and_closed(
    endpoint: MetricsEndpoint, renderer: Renderer, request_bytes: bytes, status: bytes
) -> None:
    """Another path is 404, another method 405, garbage (a TLS hello, a bad header)
    400; each closes the connection and renders nothing."""
    stream = await connect(endpoint)
    await stream.send_all(request_bytes)
    answer = await read_to_eof(stream)
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    assert renderer.accepts == []
    await stream.aclose()


async def test_an_oversized_request_head_is_refused(
    endpoint: MetricsEndpoint, renderer: Renderer
) -> None:
    """A request head beyond REQUEST_HEAD_BYTES_MAX is answered 431 and closed,
    without the server buffering it all."""
    stream = await connect(endpoint)
    header = b"x-filler: " + b"a" * (2 * REQUEST_HEAD_BYTES_MAX) + b"\r\n"
    with trio.move_on_after(1):  # the server may close before taking it all
        try:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n" + header)
        except trio.BrokenResourceError:
            pass
    answer = await read_to_eof(stream)
    assert answer.startswith(b"HTTP/1.1 431"), answer
    assert renderer.accepts == []
    await stream.aclose()


async def test_a_slow_request_head_is_cut_off(
    endpoint: MetricsEndpoint, autojump_clock: trio.testing.MockClock
) -> None:
    """A client trickling a request head (slowloris) is closed REQUEST_HEAD_TIMEOUT_S
    after it connected, whatever it still sends."""
    stream = await connect(endpoint)
    started = trio.current_time()
    await stream.send_all(b"GET /metr")
    closed = trio.Event()

    async def trickle() -> None:
        with trio.move_on_after(10 * REQUEST_HEAD_TIMEOUT_S):
            while not closed.is_set():  # one byte a second until the server closes
                await trio.sleep(1)
                try:
                    await stream.send_all(b"i")
                except trio.BrokenResourceError:
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        assert await read_to_eof(stream) == b""
        closed.set()
    assert trio.current_time() - started == pytest.approx(REQUEST_HEAD_TIMEOUT_S, abs=1.01)
    await trio.testing.wait_all_tasks_blocked()
    assert endpoint.open_connections == 0
    await stream.aclose()


async def test_an_idle_kept_alive_connection_is_closed(
    endpoint: MetricsEndpoint, autojump_clock: trio.testing.MockClock
) -> None:
    """After an answer, the next request head must come within
    REQUEST_HEAD_TIMEOUT_S too."""
    stream = await connect(endpoint)
    client = h11.Connection(h11.CLIENT)
    response, _ = await exchange(stream, client, b"GET", b"/metrics")
    assert response.status_code == 200
    answered = trio.current_time()
    assert await read_to_eof(stream) == b""
    assert trio.current_time() - answered == pytest.approx(REQUEST_HEAD_TIMEOUT_S)
    await stream.aclose()


async def test_connections_beyond_the_limit_are_closed_at_once(
    endpoint: MetricsEndpoint, autojump_clock: trio.testing.MockClock
) -> None:
    """With SCRAPES_MAX connections open, another is closed as it arrives; once
    one closes, a new one is served."""
    held = [await connect(endpoint) for _ in range(SCRAPES_MAX)]
    await trio.testing.wait_all_tasks_blocked()
    assert endpoint.open_connections == SCRAPES_MAX
    extra = await connect(endpoint)
    assert await read_to_eof(extra) == b""
    assert endpoint.refused_connections == 1
    await held.pop().aclose()
    await trio.testing.wait_all_tasks_blocked()
    stream = await connect(endpoint)
    response, body = await exchange(stream, h11.Connection(h11.CLIENT), b"GET", b"/metrics")
    assert response.status_code == 200 and body == BODY
    for each in [*held, extra, stream]:
        await each.aclose()


async def test_a_client_that_does_not_read_is_closed(
    renderer: Renderer, endpoint: MetricsEndpoint, autojump_clock: trio.testing.MockClock
) -> None:
    """A response the client does not take within RESPONSE_SEND_TIMEOUT_S ends its
    connection (the slot is free again)."""
    renderer.body = b"#" * (32 << 20)  # far more than the socket buffers hold
    stream = await connect(endpoint)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
    started = trio.current_time()
    await trio.testing.wait_all_tasks_blocked()
    while endpoint.open_connections:  # the server gives up at its deadline
        await trio.sleep(1)
    # Given up at the deadline, then closed after at most the lingering read.
    elapsed = trio.current_time() - started
    assert RESPONSE_SEND_TIMEOUT_S <= elapsed <= RESPONSE_SEND_TIMEOUT_S + LINGER_TIMEOUT_S + 1
    await stream.aclose()


async def test_a_failing_collector_fails_one_scrape_only(
    endpoint: MetricsEndpoint, renderer: Renderer
) -> None:
    """A collector that raises answers that scrape 500; the endpoint (and the
    broker around it) keeps serving the next one."""
    broken = True

    async def render(accept: str) -> tuple[bytes, str]:
        if broken:
            raise KeyError("a bug in a collector")
        return await renderer(accept)

    endpoint.render = render
    stream = await connect(endpoint)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await read_to_eof(stream)).startswith(b"HTTP/1.1 500")
    broken = False
    stream = await connect(endpoint)
    response, body = await exchange(stream, h11.Connection(h11.CLIENT), b"GET", b"/metrics")
    assert response.status_code == 200 and body == BODY
    await stream.aclose()
