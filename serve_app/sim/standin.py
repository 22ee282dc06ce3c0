"""A scripted Anthropic Messages API on loopback: the exact JSON/SSE wire format, recorded requests, fault windows.

Use it from pytest (`with AnthropicStandIn() as api: ... api.base_url ... api.requests`, a stdlib threaded server)
or as a process (`python -m serve_app.sim.standin --port 8200`). serve_app.sim.standin_server serves the same
answers on aiohttp (the faster server that `make serve` runs when no ANTHROPIC_API_KEY is set, and the simulator's
benchmark uses); what both answer is in serve_app.sim.standin_replies, the transport is theirs.

It answers deterministically from the request: the reply says how many words the last user message had, and usage
counts prompt words as input tokens and reply words as output tokens.
Markers in the last user message text pick a scenario:

    #scenario=rate_limit       429 rate_limit_error, retry-after: 7
    #scenario=rate_limit_once  429 (retry-after-ms: 50) on the first attempt, success on SDK retries
    #scenario=overloaded       529 overloaded_error, retry-after-ms: 2500
    #scenario=error=<status>   that status with its standard error type (error=context: prompt too long)
    #scenario=hang             wait `hang_s` before answering (longer than a client timeout)
    #scenario=cut              stream stops mid-way: the connection is dropped (incomplete chunked body)
    #scenario=truncate         stream ends cleanly at the HTTP level but without message_stop
    #scenario=bad_chunk        stream sends a malformed chunk-size line mid-way, then holds the connection open
    #scenario=stall            stream stops mid-way and sends only SSE comments (keep-alives, no event) every
                               `token_delay_s` for `hang_s`: the connection stays busy, no event arrives
    #scenario=error_after_200  `event: error` (overloaded_error) after some deltas
    #scenario=tool_use         a text block, then a tool_use block streamed as input_json_delta pieces
    #scenario=cache            usage with cache_read_input_tokens and cache_creation_input_tokens
    #scenario=slow             `token_delay_s` between deltas
    #scenario=stop_reason=<r>  end with that stop_reason
    #tokens=<n>                reply with n words instead of the default sentence

A request with `thinking` enabled (`{"type": "enabled" | "adaptive", ...}`) gets a signed thinking block first.

`POST /_standin/fault {"status": 429, "seconds": 15}` makes every Messages request fail with that status (429 or
529, with its retry-after) for that long: the simulator's cloud fault window. `model_suffix` (process mode:
`--model-suffix -standin`) is appended to the model of every answer, so clients and traces see a stand-in answered.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from serve_app.sim.standin_replies import ERROR_TYPES, Reply, check_request, markers, scripted_error


@dataclass
class RecordedRequest:
    """One request as received; `outcome` is filled in when the answer ends."""

    path: str
    headers: dict[str, str]
    body: Any
    outcome: str = "pending"  # ok | error | cut | disconnected | hung


@dataclass
class AnthropicStandIn:
    """The server; `start()`/`stop()` or use as a context manager. Thread-safe recording."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None  # None: any non-empty key is accepted
    base_latency_s: float = 0.0
    token_delay_s: float = 0.02
    hang_s: float = 30.0
    record_requests: bool = True  # off for long benchmark runs (memory)
    model_suffix: str = ""
    fault_status: int = 0  # set by POST /_standin/fault for a window
    fault_until: float = 0.0  # time.monotonic() deadline of that window
    requests: list[RecordedRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> AnthropicStandIn:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="anthropic-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AnthropicStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, request: RecordedRequest) -> None:
        if not self.record_requests:
            return
        with self._lock:
            self.requests.append(request)

    def wait_for_outcome(self, outcome: str, timeout: float = 5.0) -> RecordedRequest | None:
        """The first recorded request with `outcome`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = next((r for r in self.requests if r.outcome == outcome), None)
            if found is not None:
                return found
            time.sleep(0.01)
        return None

    def set_fault(self, status: int, seconds: float) -> float:
        """Every Messages request fails with `status` for `seconds`; returns the window's end (monotonic)."""
        self.fault_status, self.fault_until = status, time.monotonic() + seconds
        return self.fault_until

    def fault_now(self) -> int:
        """The status of an open fault window, or 0."""
        return self.fault_status if time.monotonic() < self.fault_until else 0

    def sleep(self, seconds: float) -> bool:
        """Sleeps unless the server stops first; True if it slept the whole time."""
        return not self._stopping.wait(seconds)


class _ClientGone(Exception):
    pass


class _HandlerResponses(BaseHTTPRequestHandler):
    """The stdlib handler's response writers (the aiohttp server has its own)."""

    standin: AnthropicStandIn
    request_id: str

    # ---------------------------------------------------------------- responses

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> str:
        error_type = ERROR_TYPES.get(status, "api_error")
        payload = {"type": "error", "error": {"type": error_type, "message": message}, "request_id": self.request_id}
        self._json(status, payload, headers)
        return "error"

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", self.request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._write(data)
        return "ok"

    def _stream(self, model: str, reply: Reply, scenarios: list[str]) -> str:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", self.request_id)
        self.end_headers()
        delay = self.standin.token_delay_s if "slow" in scenarios else 0.0
        events = list(reply.events(model, f"msg_{self.request_id}"))
        cut_at = 5 if {"cut", "truncate", "error_after_200", "bad_chunk", "stall"} & set(scenarios) else None
        for n, (name, payload) in enumerate(events):
            if cut_at is not None and n == cut_at:
                break
            if delay and name == "content_block_delta":
                self.standin.sleep(delay)
            self._chunk(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())
        if "cut" in scenarios:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # no terminating chunk: an incomplete body
            return "cut"
        if "bad_chunk" in scenarios:
            self._write(b"zz\r\nnot a chunk\r\n")  # not hex: a broken HTTP/1.1 body, then silence
            self.standin.sleep(self.standin.hang_s)
            self.close_connection = True
            return "cut"
        if "stall" in scenarios:
            deadline = time.monotonic() + self.standin.hang_s
            while time.monotonic() < deadline and self.standin.sleep(self.standin.token_delay_s):
                self._chunk(b": keep-alive\n\n")  # resets any read timeout, yields no event
            self._write(b"0\r\n\r\n")
            return "cut"
        if "error_after_200" in scenarios:
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            self._chunk(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
        self._write(b"0\r\n\r\n")
        return "cut" if "truncate" in scenarios else "ok"

    def _chunk(self, data: bytes) -> None:
        self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.close_connection = True
            raise _ClientGone from exc


class _Handler(_HandlerResponses):
    standin: AnthropicStandIn
    # Headers and body go out in separate writes; with Nagle on, a delayed ACK adds 40 ms to some answers.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    _counter = iter(range(1, 1 << 62))

    def log_message(self, format: str, *args: Any) -> None:  # silence per-request logging
        pass

    # ---------------------------------------------------------------- request handling

    def do_POST(self) -> None:
        self.request_id = f"req_standin_{next(self._counter):06d}"
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body: Any = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode(errors="replace")
        recorded = RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self.standin.record(recorded)
        try:
            recorded.outcome = self._answer(body)
        except _ClientGone:
            recorded.outcome = "disconnected"

    def _answer(self, body: Any) -> str:
        path = self.path.split("?")[0]
        if path == FAULT_PATH:
            return self._json(200, control_fault(self.standin, body))
        if path != "/v1/messages":
            return self._error(404, f"Not found: {self.path}")
        problem = check_request(self.headers, body, self.standin.api_key)
        if problem is not None:
            return self._error(*problem)
        found = markers(body["messages"])
        scenarios = found.get("scenario", [])
        if self.standin.base_latency_s:
            self.standin.sleep(self.standin.base_latency_s)
        scripted = scripted_error(self.standin.fault_now(), scenarios, self.headers.get("x-stainless-retry-count", "0"))
        if scripted is not None:
            return self._error(*scripted)
        if "hang" in scenarios:
            self.standin.sleep(self.standin.hang_s)
            self.close_connection = True
            return "hung"
        reply = Reply.build(body, scenarios, found.get("tokens"))
        model = body["model"] + self.standin.model_suffix
        if body.get("stream"):
            return self._stream(model, reply, scenarios)
        return self._json(200, reply.message(model, f"msg_{self.request_id}"))


FAULT_PATH = "/_standin/fault"


def control_fault(standin: AnthropicStandIn, body: Any) -> dict[str, Any]:
    """POST /_standin/fault: opens a window of 429 or 529 answers (the simulator's cloud fault)."""
    body = body if isinstance(body, dict) else {}
    seconds = body.get("seconds")
    if body.get("status") not in (429, 529) or not isinstance(seconds, int | float) or seconds <= 0:
        return {"ok": False, "error": 'send {"status": 429 | 529, "seconds": <number>}'}
    until = standin.set_fault(int(body["status"]), float(body["seconds"]))
    return {"ok": True, "status": body["status"], "until": time.time() + (until - time.monotonic())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--api-key", default=None, help="Accept only this key (default: any non-empty key).")
    parser.add_argument("--latency", type=float, default=0.0, help="Base latency before each answer, seconds.")
    parser.add_argument("--token-delay", type=float, default=0.02, help="Delay between deltas for #scenario=slow.")
    parser.add_argument("--record", action="store_true", help="Keep every request in memory (off by default).")
    args = parser.parse_args(argv)
    standin = AnthropicStandIn(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        base_latency_s=args.latency,
        token_delay_s=args.token_delay,
        record_requests=args.record,
    ).start()
    print(f"anthropic stand-in listening on {standin.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
