"""The slot a request's response is delivered into: :class:`PendingResponse`.

:class:`~client._io.connection.BrokerConnection` registers one slot per request
that wants an answer, under its correlation id.  The connection's dispatch
resolves it with the response, or fails it with a typed error (connection lost,
deadline passed).  Completing a slot runs its ``on_done`` callback in the same
call (the producer completes its batches there, with no task per request) and
wakes a task parked in :meth:`PendingResponse.wait_done`.
"""

from __future__ import annotations

from collections.abc import Callable

from client._io.event_loop import LoopEvent
from client.errors import DistributaryError, error_for_code
from client.protocol.connection import IncomingResponse
from client.protocol.messages import ErrorResponse


class PendingResponse:
    """The slot a response (or the error that replaces it) is delivered into.

    ``on_done(slot)``, when set, runs once when the slot completes, inside the
    connection's dispatch (see the module docstring for its rules).
    ``on_more(response)``, for a fetch stream, runs the same way for each
    response flagged MORE: the slot stays open (its deadline starts again) until
    the stream's last response completes it.
    """

    __slots__ = (
        "_event",
        "_event_class",
        "correlation_id",
        "deadline",
        "error",
        "on_done",
        "on_more",
        "response",
        "timeout_ms",
    )

    def __init__(
        self,
        correlation_id: int,
        deadline: float,
        timeout_ms: int,
        event_class: Callable[[], LoopEvent],
        on_done: Callable[[PendingResponse], None] | None = None,
        on_more: Callable[[IncomingResponse], None] | None = None,
    ) -> None:
        self.correlation_id = correlation_id
        self.deadline = deadline
        self.timeout_ms = timeout_ms
        self.response: IncomingResponse | None = None
        self.error: DistributaryError | None = None
        self.on_done = on_done
        self.on_more = on_more
        self._event_class = event_class
        self._event: LoopEvent | None = None

    @property
    def done(self) -> bool:
        return self.response is not None or self.error is not None

    def resolve(self, response: IncomingResponse) -> None:
        self.response = response
        self._finish()

    def fail(self, error: DistributaryError) -> None:
        self.error = error
        self._finish()

    def _finish(self) -> None:
        on_done = self.on_done
        if on_done is not None:
            self.on_done = None
            on_done(self)
        if self._event is not None:
            self._event.set()

    async def wait_done(self) -> None:
        """Park until the slot is resolved or failed."""
        if self.done:
            return
        if self._event is None:
            self._event = self._event_class()
        await self._event.wait()

    def result(self) -> IncomingResponse:
        """The response of a done slot.  Raises the slot's error (ConnectionClosedError,
        ProtocolError, RequestTimedOutError) or the typed error of an ErrorResponse."""
        if self.error is not None:
            raise self.error
        response = self.response
        assert response is not None, "the slot is not done yet"
        body = response.body
        if type(body) is ErrorResponse:
            raise error_for_code(body.error_code, body.error_message)
        return response
