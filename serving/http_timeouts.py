"""uvicorn's HTTP protocol with a header timeout: a client that opens a connection and sends only part of
its request line or headers is answered 408 and closed, instead of holding a connection (and a slot of
the worker's) for as long as it likes. uvicorn times out idle keep-alive connections but not these.

The body timeout lives in the app (serving/app.py), which reads the body; headers are read before the
app is called, so their deadline has to live here, in the protocol.
"""

from __future__ import annotations

import os

from trainkite.errors import UserInputError

HEADER_TIMEOUT_ENV, BODY_TIMEOUT_ENV = "TRAINKITE_HEADER_TIMEOUT_SECONDS", "TRAINKITE_BODY_TIMEOUT_SECONDS"
DEFAULT_HEADER_TIMEOUT_S = 10.0
# SageMaker gives a real-time invocation 60 s in all; the body has to be in well before that.
DEFAULT_BODY_TIMEOUT_S = 30.0


def timeout_from_env(name: str, default: float, env: dict[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise UserInputError(f"{name}={raw!r}: must be a number of seconds in (0, 3600] (default {default:g})")
    return value


def check_timeouts(env: dict[str, str] | None = None) -> tuple[float, float]:
    """(header, body) timeouts from the environment; UserInputError naming a bad one."""
    return (
        timeout_from_env(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S, env),
        timeout_from_env(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S, env),
    )


def _timeout_body(seconds: float) -> bytes:
    body = (
        f'{{"error":"request headers not received within {seconds:g} s '
        f'({HEADER_TIMEOUT_ENV}); send the whole request at once"}}'
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class _HeaderTimeout:
    """Mixed into a uvicorn protocol: a timer from the connection's start (and from the end of each response)
    to the end of the next request's headers."""

    _header_timer = None
    _bytes_since_arm = False

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._bytes_since_arm = False
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being handled: its headers were complete
        if self._bytes_since_arm:
            self.transport.write(_timeout_body(self._header_timeout_s))
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timeout_s = timeout_from_env(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if data:
            self._bytes_since_arm = True
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402  (after the plain helpers above)


class H11WithHeaderTimeout(_HeaderTimeout, H11Protocol):
    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm_header_timer()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn's "auto" would pick h11 too
    HttpToolsProtocol = None

if HttpToolsProtocol is not None:

    class HttpToolsWithHeaderTimeout(_HeaderTimeout, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()


# What uvicorn's http="auto" would choose (httptools when installed: ~20-25 % less CPU per request), plus the
# header deadline. uvicorn.run(http="serving.http_timeouts:PROTOCOL") imports it in every worker.
PROTOCOL = HttpToolsWithHeaderTimeout if HttpToolsProtocol is not None else H11WithHeaderTimeout
