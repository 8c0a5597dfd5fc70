"""Serving's HTTP layer under unfaithful or slow clients: CSV parsed as CSV, Accept honoured, 408 on stalls."""

from __future__ import annotations

import csv
import io
import json
import socket
import time

import pytest

from serving.payload import PayloadError, _from_csv, response_format
from tests.faults.serving import serve_model
from tests.fixtures_models import copy_model, trained_model_dir  # noqa: F401


def _csv(texts: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    for t in texts:
        w.writerow([t])
    return buf.getvalue().encode()


TRICKY = ["line one\nline two", "has, a comma", 'say "hi"', "plain", "", "crlf\r\ninside"]


def test_csv_records_as_a_csv_writer_writes_them():
    assert _from_csv(_csv(TRICKY)) == TRICKY
    # A header row is not a text: auto-detected (`text`), declared (header=present), or turned off.
    assert _from_csv(b"text\nhello\n") == ["hello"]
    assert _from_csv(b"text\nhello\n", "absent") == ["text", "hello"]
    assert _from_csv(b"review\nhello\n", "present") == ["hello"]
    # A header with several columns picks its `text` column, quoted newlines included.
    assert _from_csv(b'id,text\n1,hello\n2,"x\ny"\n') == ["hello", "x\ny"]
    with pytest.raises(PayloadError, match="one must be named 'text'"):
        _from_csv(b"a,b\n1,2\n", "present")
    with pytest.raises(PayloadError, match="record 2 has 2 fields"):
        _from_csv(b'ok\n"a","b"\n')
    with pytest.raises(PayloadError, match="record 1: a quoted text is never closed"):
        _from_csv(b'"never closed\n')


@pytest.mark.parametrize(
    "accept, expected",
    [
        (None, ("json", False)),
        ("*/*", ("json", True)),
        ("application/json", ("json", True)),
        ("text/csv", ("csv", True)),
        ("text/csv; header=absent", ("csv", False)),
        ("application/json;q=0.5, text/csv", ("csv", True)),
        ("text/html, */*;q=0.1", ("json", True)),
    ],
)
def test_accept_picks_the_answer_format(accept, expected):
    assert response_format(accept) == expected


def test_an_accept_nothing_can_meet_is_406():
    with pytest.raises(PayloadError) as err:
        response_format("text/html, application/xml")
    assert err.value.status == 406 and "Accept application/json or text/csv" in err.value.message


@pytest.fixture(scope="module")
def slow_server(trained_model_dir, tmp_path_factory):  # noqa: F811
    base = tmp_path_factory.mktemp("serve-timeouts")
    copy_model(trained_model_dir, base / "store", "timeouts-1")
    mp = pytest.MonkeyPatch()
    mp.setenv("TRAINKITE_HEADER_TIMEOUT_SECONDS", "1.5")
    mp.setenv("TRAINKITE_BODY_TIMEOUT_SECONDS", "1.5")
    try:
        with serve_model(base / "store", "timeouts-1", base / "serve.log") as s:
            yield s
    finally:
        mp.undo()


def _raw(url: str, data: bytes, wait: float = 10) -> tuple[bytes, float]:
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - t0


def test_half_sent_headers_get_408_and_the_connection_is_closed(slow_server):
    reply, took = _raw(slow_server.url, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: app")
    assert reply.startswith(b"HTTP/1.1 408") and b"request headers not received within 1.5 s" in reply
    assert 1.0 < took < 8


def test_a_stalled_body_gets_408(slow_server):
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    reply, took = _raw(slow_server.url, head + b'{"instances": ["half')
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"request body not received within 1.5 s" in reply and b"20 bytes arrived" in reply
    assert took < 8


def test_csv_in_csv_out_through_the_server(slow_server):
    import requests

    r = requests.post(
        f"{slow_server.url}/invocations",
        data=b"text\n" + _csv(TRICKY),
        headers={"Content-Type": "text/csv", "Accept": "text/csv"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == len(TRICKY)  # the header row was not scored, the quoted newlines did not split rows
    assert {"label", "model_id", "score_negative", "score_neutral", "score_positive"} == set(rows[0])
    assert all(row["model_id"] == "timeouts-1" for row in rows)
    as_json = requests.post(
        f"{slow_server.url}/invocations",
        data=json.dumps({"instances": TRICKY}),
        headers={"Content-Type": "application/json"},
        timeout=30,
    ).json()["predictions"]
    assert [row["label"] for row in rows] == [p["label"] for p in as_json]
    r = requests.post(
        f"{slow_server.url}/invocations",
        data=json.dumps({"instances": ["x"]}),
        headers={"Content-Type": "application/json", "Accept": "image/png"},
        timeout=30,
    )
    assert r.status_code == 406 and "Accept" in r.json()["error"]
    # After the stalls above the server still answers at once.
    assert requests.get(f"{slow_server.url}/ping", timeout=5).status_code == 200
