"""Clients that do what real clients and hostile ones do: bodies sent in
chunks, wrong or missing content types, values out of range, characters cut
by `max_tokens`, connections that stall, clients that hang up, and requests
arriving while the server drains."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest
import requests

from conftest import MODEL_NAME, parse_metrics
from test_own_server import start, stop_and_read_log

CHAT = "/v1/chat/completions"


def body(**extra):
    b = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Say hello in German."}],
         "temperature": 0, "max_tokens": 6}
    b.update(extra)
    return b


def error_of(response, status):
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["message"] and error["type"], error
    return error


def test_a_body_sent_in_chunks_is_served_like_one_with_a_length(server):
    """Go's and Java's clients, and proxies, stream uploads of unknown length."""
    whole = requests.post(f"{server.url}{CHAT}", json=body(), timeout=300)
    assert whole.status_code == 200, whole.text
    data = json.dumps(body()).encode()

    def pieces():
        for i in range(0, len(data), 7):
            yield data[i:i + 7]
    chunked = requests.post(f"{server.url}{CHAT}", data=pieces(),
                            headers={"content-type": "application/json"}, timeout=300)
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert chunked.status_code == 200, chunked.text
    assert chunked.json()["choices"][0]["message"]["content"] == \
        whole.json()["choices"][0]["message"]["content"]

    def too_much():
        yield data[:-1] + b', "user": "'
        for _ in range(5):
            yield b"x" * (1 << 20)
        yield b'"}'
    large = requests.post(f"{server.url}{CHAT}", data=too_much(),
                          headers={"content-type": "application/json"}, timeout=300)
    error_of(large, 413)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_as_json_is_refused_with_415(server, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    r = requests.post(f"{server.url}{CHAT}", data=json.dumps(body()), headers=headers, timeout=60)
    error = error_of(r, 415)
    assert "application/json" in error["message"], error
    ok = requests.post(f"{server.url}{CHAT}", data=json.dumps(body()),
                       headers={"content-type": "Application/JSON; charset=utf-8"}, timeout=300)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("extra, param", [
    ({"speculative": {"p_min": -1}}, "speculative.p_min"),
    ({"speculative": {"p_min": 1.5}}, "speculative.p_min"),
    ({"speculative": {"p_min": 1e308}}, "speculative.p_min"),
    ({"speculative": {"p_min": 2 ** 63}}, "speculative.p_min"),
    ({"speculative": {"min": 100, "max": 2}}, "speculative.min"),
    ({"speculative": {"min": 2147483648}}, "speculative.min"),
    ({"messages": [[]]}, "messages[0]"),
    ({"temperature": "hot"}, "temperature"),
    ({"stop": 5}, "stop"),
])
def test_values_out_of_range_are_refused_naming_the_field(server, extra, param):
    r = requests.post(f"{server.url}{CHAT}", json=body(**extra), timeout=60)
    error = error_of(r, 400)
    assert error["param"] == param, error
    for internal in ("struct", "WireMessage", "Rejection", "enum"):
        assert internal not in error["message"], error


def test_a_character_cut_by_max_tokens_is_not_sent_as_a_replacement(server):
    """One token of a reply to invisible formatting characters is often part
    of a multi-byte character: the text ends at the last whole character."""
    request = body(messages=[{"role": "user", "content": "\u202e\u200b"}], max_tokens=1)
    whole = requests.post(f"{server.url}{CHAT}", json=request, timeout=300)
    assert whole.status_code == 200, whole.text
    text = whole.json()["choices"][0]["message"]["content"]
    assert "\ufffd" not in text
    streamed = requests.post(f"{server.url}{CHAT}", json={**request, "stream": True}, timeout=300, stream=True)
    pieces = []
    for line in streamed.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            delta = json.loads(line[6:])["choices"][0]["delta"]
            pieces.append(delta.get("content") or "")
    assert "".join(pieces) == text


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `sock` within `seconds`; what it sent."""
    sock.settimeout(seconds)
    received = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True, received
            received += data
    except ConnectionResetError:
        return True, received
    except socket.timeout:
        return False, received


def test_stalled_connections_are_closed_while_requests_are_served(models, tmp_path):
    """Slowloris: connections that send nothing, half a head or half a body
    hold nothing for longer than the read timeout, and a bounded number of
    connections does not lock out clients for longer than that."""
    url, process = start(models, tmp_path, "--read-timeout", "2", "--max-connections", "8",
                         "--max-waiting", "4")
    try:
        stalled = []
        for i in range(6):
            s = connect(url)
            if i % 3 == 1:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
            elif i % 3 == 2:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\":")
            stalled.append(s)
        started = time.monotonic()
        # Two more connections than the bound allows: served once stalled
        # ones are cut off.
        results = []
        clients = [threading.Thread(target=lambda: results.append(requests.post(
            f"{url}{CHAT}", json={**body(), "model": "m", "max_tokens": 2}, timeout=120)))
            for _ in range(4)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=150)
        assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
        for i, s in enumerate(stalled):
            closed, sent = closed_within(s, 10)
            assert closed, f"stalled connection {i} still open after {time.monotonic() - started:.0f} s"
            if i % 3 == 2:
                # Half a body: a 408 with the error object, then the close.
                head, _, payload = sent.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408"), sent
                assert json.loads(payload)["error"]["message"], sent
            s.close()
        assert time.monotonic() - started < 30
        log = stop_and_read_log(process)
        assert "ERROR" not in log, log[-3000:]
    finally:
        process.kill()


def test_a_client_hanging_up_is_counted_as_cancelled_not_logged_as_an_error(models, tmp_path):
    url, process = start(models, tmp_path)
    long = {**body(), "model": "m", "max_tokens": 300,
            "messages": [{"role": "user", "content": "Count from 1 to 300, one number per line."}]}
    try:
        for _ in range(3):
            r = requests.post(f"{url}{CHAT}", json={**long, "stream": True}, stream=True, timeout=120)
            assert r.status_code == 200
            next(r.iter_lines())
            r.close()
        # A non-streamed one, cut off by closing the socket mid-generation.
        s = connect(url)
        payload = json.dumps(long).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        time.sleep(1)
        s.close()

        def cancelled():
            metrics = parse_metrics(requests.get(f"{url}/metrics", timeout=10).text)
            return metrics.get(("specdec_requests_total", frozenset({("status", "cancelled")})), 0)
        deadline = time.time() + 60
        while cancelled() < 4 and time.time() < deadline:
            time.sleep(0.5)
        assert cancelled() == 4, stop_and_read_log(process)[-4000:]
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert "specdec_num_requests_running 0" in metrics
        log = stop_and_read_log(process)
        assert log.count("request cancelled: the client went away") == 4, log[-3000:]
        assert "ERROR" not in log and "IncompleteMessage" not in log, log[-3000:]
    finally:
        process.kill()


def test_requests_during_the_drain_get_503_with_the_error_object(models, tmp_path):
    """SIGTERM: in-flight requests finish; meanwhile the port stays open,
    /readyz fails and new requests get a 503 error object to retry elsewhere."""
    url, process = start(models, tmp_path)
    try:
        results = []
        counting = {**body(), "model": "m", "max_tokens": 150,
                    "messages": [{"role": "user", "content": "Count from 1 to 300, one number per line."}]}
        in_flight = threading.Thread(target=lambda: results.append(requests.post(
            f"{url}{CHAT}", json=counting, timeout=120)))
        in_flight.start()
        time.sleep(1.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        ready = requests.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        late = requests.post(f"{url}{CHAT}", json={**body(), "model": "m"}, timeout=60)
        error = error_of(late, 503)
        assert "shutting down" in error["message"], error
        assert late.headers.get("retry-after"), late.headers
        in_flight.join(timeout=120)
        assert results and results[0].status_code == 200, results
        assert results[0].json()["usage"]["completion_tokens"] == 150
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


RAW = "<raw JSON>"


def hostile_requests(n: int, seed: int = 1809):
    """`n` generated requests: a valid one-token chat body with one field
    replaced by a value of the wrong type, at a numeric edge, huge, deeply
    nested or full of NULs and invalid UTF-8; raw bodies that are not JSON;
    wrong methods, paths and content types; duplicate keys."""
    import random
    rng = random.Random(seed)
    fields = ["model", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream",
              "stream_options", "stop", "seed", "presence_penalty", "logprobs", "user", "language",
              "speculative", "max_completion_tokens"]
    edges = [None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, -2 ** 63, 2 ** 64, 1e308, -1e308, 1e-320, 0.5,
             "", "x", "\u0000", "\ud7ff\ue000", "🦀" * 50, [], {}, [[]], [{}], {"a": {"b": {}}},
             ["a"] * 5, "y" * 100_000]

    def value():
        choice = rng.random()
        if choice < 0.7:
            return rng.choice(edges)
        if choice < 0.8:
            # Deep nesting, spliced in as text (Python's encoder recurses).
            depth = rng.choice([10, 100, 1000, 100_000])
            return RAW, "[" * depth + "1" + "]" * depth
        if choice < 0.9:
            return {k: rng.choice(edges) for k in rng.sample(["max", "min", "p_min", "adaptive", "enabled",
                                                             "drafter", "x"], 2)}
        return [{"role": rng.choice(["user", "system", "tool", 5]), "content": rng.choice(edges)}]

    for i in range(n):
        base = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                "temperature": 0}
        kind = i % 10
        path, method, headers = CHAT, "POST", {"content-type": "application/json"}
        if kind < 6:
            field, new = rng.choice(fields), value()
            raw = None
            if isinstance(new, tuple) and new[0] is RAW:
                raw, new = new[1], RAW
            base[field] = new
            if field == "max_tokens" and isinstance(new, int) and not isinstance(new, bool) and new > 1:
                base["max_tokens"] = 1  # no long generations: the test is about input
            data = json.dumps(base).encode()
            if raw is not None:
                data = data.replace(json.dumps(RAW).encode(), raw.encode())
        elif kind == 6:
            data = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 10, 1000])))
        elif kind == 7:
            # Duplicate keys, invalid UTF-8, NUL bytes inside JSON strings.
            data = rng.choice([
                b'{"model": "x", "model": "%s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'
                % MODEL_NAME.encode(),
                b'{"model": "%s", "messages": [{"role": "user", "content": "\xff\xfe"}], "max_tokens": 1}'
                % MODEL_NAME.encode(),
                b'{"model": "%s", "messages": [{"role": "user", "content": "a\\u0000b"}], "max_tokens": 1}'
                % MODEL_NAME.encode(),
                b'{"model": "%s", "messages": [' % MODEL_NAME.encode()
                + b",".join([b'{"role": "user", "content": "hi"}'] * 10_000) + b'], "max_tokens": 1}',
            ])
        elif kind == 8:
            method, path = rng.choice([("GET", CHAT), ("PUT", CHAT), ("DELETE", "/v1/completions"),
                                       ("POST", "/v1/chat"), ("POST", "/v2/chat/completions"),
                                       ("POST", "/v1/chat/completions/x"), ("GET", "/%00"),
                                       ("POST", "/v1/models")])
            data = json.dumps(base).encode()
        else:
            headers = {"content-type": rng.choice(["text/plain", "application/xml", "application/jsonx",
                                                   "multipart/form-data; boundary=x", "*/*", ""])}
            data = json.dumps(base).encode()
        yield method, path, headers, data


def test_a_thousand_hostile_requests_get_error_objects_or_answers_and_break_nothing(server):
    """Every response is OpenAI's error object (4xx) or a completion, none
    is a 5xx, and the server serves normally afterwards."""
    import concurrent.futures
    started = time.monotonic()
    session = requests.Session()

    def send(request):
        method, path, headers, data = request
        r = session.request(method, f"{server.url}{path}", data=data, headers=headers, timeout=120)
        return request, r.status_code, r.content, r.headers.get("content-type", "")

    statuses: dict[int, int] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        for request, status, content, content_type in pool.map(send, hostile_requests(1000)):
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (request[:3], status, content[:300])
            if status == 200 and content_type.startswith("text/event-stream"):
                assert content.rstrip().endswith(b"data:[DONE]"), content[-300:]
                continue
            reply = json.loads(content)
            if status == 200:
                assert reply["choices"][0]["finish_reason"] in ("length", "stop"), reply
            else:
                assert reply["error"]["message"] and reply["error"]["type"], (request[:3], status, reply)
                assert "struct " not in reply["error"]["message"], reply
    print(f"1000 hostile requests in {time.monotonic() - started:.0f} s: {sorted(statuses.items())}")
    assert statuses.get(200, 0) > 0 and sum(v for k, v in statuses.items() if 400 <= k < 500) > 500
    assert server.healthy()
    normal = requests.post(f"{server.url}{CHAT}", json=body(), timeout=300)
    assert normal.status_code == 200, normal.text
    metrics = server.metrics()
    assert "specdec_num_requests_running 0" in metrics and "specdec_num_requests_waiting 0" in metrics


def test_a_client_expecting_100_continue_gets_it_and_then_its_answer(server):
    """curl and others ask before sending a large body: the interim 100 is
    not mistaken for a response of the HTTP layer's own."""
    payload = json.dumps(body(user="u" * 2000)).encode()
    s = connect(server.url)
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: "
                  + str(len(payload)).encode() + b"\r\n\r\n")
        s.settimeout(30)
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        s.sendall(payload)
        closed, sent = closed_within(s, 120)
    finally:
        s.close()
    assert closed
    head, _, answer = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), sent[:500]
    assert json.loads(answer)["choices"][0]["message"]["content"]


POST_HEAD = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
UNPARSABLE = [
    ("uri too long", "GET /" + "a" * 70_000 + " HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("headers too large", "GET /healthz HTTP/1.1\r\nHost: x\r\n"
     + "".join(f"X-{i}: {'v' * 8000}\r\n" for i in range(60)) + "\r\n"),
    ("too many headers", "GET /healthz HTTP/1.1\r\nHost: x\r\n"
     + "".join(f"X-{i}: v\r\n" for i in range(200)) + "\r\n"),
    ("garbage request line", "GARBAGE\r\n\r\n"),
    ("unknown http version", "GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n"),
    ("header without colon", "GET /healthz HTTP/1.1\r\nHost x\r\n\r\n"),
    ("negative length", POST_HEAD + "Content-Length: -1\r\n\r\n"),
    ("length not a number", POST_HEAD + "Content-Length: abc\r\n\r\n"),
    ("two different lengths", POST_HEAD + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("length of 2^64", POST_HEAD + f"Content-Length: {2 ** 64}\r\n\r\n"),
    ("bogus transfer encoding", POST_HEAD + "Transfer-Encoding: bogus\r\n\r\n"),
]


@pytest.mark.parametrize("name, request_text", UNPARSABLE, ids=[u[0] for u in UNPARSABLE])
def test_requests_too_malformed_to_parse_get_the_error_object(server, name, request_text):
    s = connect(server.url)
    try:
        s.sendall(request_text.encode())
        closed, sent = closed_within(s, 20)
    finally:
        s.close()
    assert closed, name
    head, _, payload = sent.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert 400 <= status < 500, (name, head)
    error = json.loads(payload)["error"]
    assert error["message"] and error["type"] == "invalid_request_error", (name, error)
    assert server.healthy()
