"""A fault-injecting HTTP proxy in front of moto's S3 server.

Point boto3 at `proxy.url` (AWS_ENDPOINT_URL) and every request is forwarded to moto, except those a
test scripted to fail: the proxy then answers with the status and S3 XML error body real S3 would send
(500 InternalError, 503 SlowDown, 403 AccessDenied, ...), or delays the request before forwarding it.

    proxy = S3FaultProxy(moto_url).start()
    proxy.fail(status=503, code="SlowDown", method="PUT", path=r"/weights\\.safetensors$", times=2)
    ...
    proxy.requests_to("PUT", r"weights")  # [(method, path, status), ...]
    proxy.stop()

Works across processes (a `trainkite` subprocess with AWS_ENDPOINT_URL=proxy.url), unlike botocore hooks.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlsplit

MESSAGES = {
    "InternalError": "We encountered an internal error. Please try again.",
    "SlowDown": "Please reduce your request rate.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "AccessDenied": "Access Denied",
    "NoSuchBucket": "The specified bucket does not exist",
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
}


@dataclass
class S3Fault:
    status: int | None  # None: forward normally after `delay`
    code: str = "InternalError"
    method: str | None = None
    path: str | None = None  # regex searched in the request path (bucket and key, path-style)
    times: int | None = 1  # None: forever
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or re.search(self.path, path) is not None
        )


def error_body(code: str, path: str) -> bytes:
    message = MESSAGES.get(code, code)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<Resource>{path}</Resource><RequestId>fault-proxy</RequestId></Error>"
    ).encode()


class S3FaultProxy:
    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self._faults: list[S3Fault] = []
        self._log: list[tuple[str, str, int | str]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        proxy = self

        class Handler(_Handler):
            pass

        Handler.proxy = proxy
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="s3-fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ scripting

    def fail(
        self,
        status: int = 500,
        code: str = "InternalError",
        *,
        method: str | None = None,
        path: str | None = None,
        times: int | None = 1,
    ) -> S3Fault:
        """The next `times` requests matching `method` and `path` (regex) get `status` + S3 error `code`."""
        return self._add(S3Fault(status, code, method, path, times))

    def delay(
        self, seconds: float, *, method: str | None = None, path: str | None = None, times: int | None = 1
    ) -> S3Fault:
        """Hold matching requests `seconds` before forwarding them (they still succeed)."""
        return self._add(S3Fault(None, "", method, path, times, seconds))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add(self, fault: S3Fault) -> S3Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    @property
    def requests(self) -> list[tuple[str, str, int | str]]:
        with self._lock:
            return list(self._log)

    def requests_to(self, method: str, path_regex: str) -> list[tuple[str, str, int | str]]:
        return [r for r in self.requests if r[0] == method and re.search(path_regex, r[1])]

    # ------------------------------------------------------------------ internals

    def _take_fault(self, method: str, path: str) -> S3Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _record(self, method: str, path: str, status: int | str) -> None:
        with self._lock:
            self._log.append((method, path, status))


class _Handler(BaseHTTPRequestHandler):
    proxy: S3FaultProxy
    protocol_version = "HTTP/1.1"

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes, length: str | None = None) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        # A HEAD answer carries the object's length, not the (empty) body's.
        self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        method, path = self.command, self.path
        body = self._read_body()
        fault = self.proxy._take_fault(method, urlsplit(path).path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            self.proxy._record(method, path, fault.status)
            self._reply(
                fault.status,
                [("Content-Type", "application/xml"), ("x-amz-request-id", "fault-proxy")],
                error_body(fault.code, urlsplit(path).path),
            )
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.proxy.upstream, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            status, length = resp.status, resp.getheader("Content-Length")
        finally:
            conn.close()
        self.proxy._record(method, path, status)
        self._reply(status, out, data, length)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args) -> None:
        pass
