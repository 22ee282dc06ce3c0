"""The Anthropic stand-in as a process on aiohttp: the same answers as serve_app.sim.standin, at generator speed.

`make serve` runs it (`python -m serve_app.sim.standin_server --port 8200 --model-suffix=-standin`) when no
ANTHROPIC_API_KEY is set, and bench/bench_sim_generator.py loads it. The stdlib server in serve_app.sim.standin
stays the tests' in-process stand-in; both answer from serve_app.sim.standin_replies, with the same fault window.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from typing import Any

from aiohttp import web

from serve_app.sim.standin import FAULT_PATH, AnthropicStandIn, control_fault
from serve_app.sim.standin_replies import ERROR_TYPES, Reply, check_request, markers, scripted_error

_STANDIN = web.AppKey("standin", AnthropicStandIn)
_IDS = web.AppKey("ids", itertools.count)
_CUT_AT = 5


def create_app(standin: AnthropicStandIn) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_STANDIN] = standin
    app[_IDS] = itertools.count(1)
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post(FAULT_PATH, _fault)
    app.router.add_get("/", _about)
    return app


async def _about(request: web.Request) -> web.Response:
    return web.json_response({"standin": "anthropic", "note": "a stand-in of the Anthropic Messages API, not Claude"})


async def _fault(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        body = None
    answer = control_fault(request.app[_STANDIN], body)
    return web.json_response(answer, status=200 if answer["ok"] else 400)


async def _messages(request: web.Request) -> web.StreamResponse:
    standin = request.app[_STANDIN]
    request_id = f"req_standin_{next(request.app[_IDS]):06d}"
    raw = await request.read()
    try:
        body: Any = json.loads(raw or b"null")
    except ValueError:
        body = raw.decode(errors="replace")
    problem = check_request(request.headers, body, standin.api_key)
    if problem is not None:
        return _error(request_id, *problem)
    found = markers(body["messages"])
    scenarios = found.get("scenario", [])
    if standin.base_latency_s:
        await asyncio.sleep(standin.base_latency_s)
    scripted = scripted_error(standin.fault_now(), scenarios, request.headers.get("x-stainless-retry-count", "0"))
    if scripted is not None:
        return _error(request_id, *scripted)
    if "hang" in scenarios:
        await asyncio.sleep(standin.hang_s)
        raise web.HTTPServiceUnavailable()
    reply = Reply.build(body, scenarios, found.get("tokens"))
    model = body["model"] + standin.model_suffix
    if not body.get("stream"):
        return web.json_response(reply.message(model, f"msg_{request_id}"), headers={"request-id": request_id})
    headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    response = web.StreamResponse(headers={**headers, "request-id": request_id})
    await response.prepare(request)
    delay = standin.token_delay_s if "slow" in scenarios else 0.0
    cut = bool({"cut", "truncate", "error_after_200", "bad_chunk"} & set(scenarios))
    for n, (name, payload) in enumerate(reply.events(model, f"msg_{request_id}")):
        if cut and n == _CUT_AT:
            break
        if delay and name == "content_block_delta":
            await asyncio.sleep(delay)
        await response.write(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())
    if {"cut", "bad_chunk"} & set(scenarios) and request.transport is not None:
        if "bad_chunk" in scenarios:
            request.transport.write(b"zz\r\nnot a chunk\r\n")
        request.transport.close()  # no terminating chunk: an incomplete body
        return response
    if "error_after_200" in scenarios:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        await response.write(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
    await response.write_eof()
    return response


def _error(request_id: str, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    payload = {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": request_id,
    }
    return web.json_response(payload, status=status, headers={"request-id": request_id, **(headers or {})})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--api-key", default=None, help="Accept only this key (default: any non-empty key).")
    parser.add_argument("--latency", type=float, default=0.0, help="Base latency before each answer, seconds.")
    parser.add_argument("--token-delay", type=float, default=0.02, help="Delay between deltas for #scenario=slow.")
    parser.add_argument("--model-suffix", default="", help="Appended to the model of every answer (e.g. -standin).")
    args = parser.parse_args(argv)
    standin = AnthropicStandIn(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        base_latency_s=args.latency,
        token_delay_s=args.token_delay,
        record_requests=False,
        model_suffix=args.model_suffix,
    )
    print(f"anthropic stand-in (not Claude) listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(create_app(standin), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
