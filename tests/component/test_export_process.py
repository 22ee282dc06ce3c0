"""The span export process: batches arrive once, a hanging collector costs a bounded wait, a dead child is
replaced, and the child never outlives its replica."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.telemetry import InMemoryMetricsSink, Telemetry
from serve_app.telemetry.export_process import WORKER_MODULE, ChildProcessExporter, span_record, write_frame
from serve_app.telemetry.observation import Observation
from tests.component.test_telemetry_export import backend, finish, one_request, router_args
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.waiting import wait_for

RESOURCE = Resource({"service.name": "router-test"})


def _spans(n: int, prefix: str) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("hybrid_llm.router")
    for i in range(n):
        tracer.start_span("chat auto", attributes={"llm.request_id": f"{prefix}{i}", "llm.cost_usd": 0.5}).end()
    return list(memory.get_finished_spans())


def _exporter(url: str, *, timeout_s: float = 2.0, backoff_s: float = 0.0) -> ChildProcessExporter:
    return ChildProcessExporter(
        resource=RESOURCE,
        telemetry_args={"export_timeout_s": timeout_s},
        timeout_s=timeout_s,
        environ={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": url},
        restart_backoff_s=backoff_s,
    )


def test_every_batch_reaches_the_collector_once_from_the_child_process() -> None:
    with OtlpHttpReceiver() as tempo:
        exporter = _exporter(tempo.base_url)
        try:
            assert exporter.export(_spans(5, "a")) is SpanExportResult.SUCCESS
            assert exporter.export(_spans(3, "b")) is SpanExportResult.SUCCESS
            child = exporter.pid
        finally:
            exporter.shutdown()
        assert child is not None and child != os.getpid()
        assert sorted(s.attributes["llm.request_id"] for s in tempo.spans) == sorted(
            [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(3)]
        )
        assert {s.resource["service.name"] for s in tempo.spans} == {"router-test"}
        assert {s.attributes["llm.cost_usd"] for s in tempo.spans} == {0.5}


def test_a_collector_that_answers_503_is_a_failed_export() -> None:
    with OtlpHttpReceiver(mode="refuse") as tempo:
        exporter = _exporter(tempo.base_url, timeout_s=1.0)
        try:
            assert exporter.export(_spans(2, "r")) is SpanExportResult.FAILURE
        finally:
            exporter.shutdown()


def test_a_hanging_collector_fails_each_export_and_a_batch_sent_while_the_child_is_busy_is_refused() -> None:
    """The replica waits for the child's answer only `timeout_s` + 1 s; a batch that comes while the child is
    still stuck in an earlier export is refused at once (a counted drop), never piled into the pipe."""
    with OtlpHttpReceiver(mode="hang") as tempo:
        exporter = ChildProcessExporter(  # the child's own export may take 5 s; the replica waits 1.5 s
            resource=RESOURCE,
            telemetry_args={"export_timeout_s": 5.0},
            timeout_s=0.5,
            environ={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url},
        )
        try:
            assert exporter.export(_spans(2, "hung")) is SpanExportResult.FAILURE
            assert exporter.export(_spans(2, "refused")) is SpanExportResult.FAILURE
            tempo.mode = "ok"
            tempo.release()
            results = [exporter.export(_spans(2, f"after{n}-")) for n in range(5)]
        finally:
            exporter.shutdown()
        assert SpanExportResult.SUCCESS in results
        ids = {s.attributes["llm.request_id"] for s in tempo.spans}
        assert not {"refused0", "refused1"} & ids


def test_a_killed_child_is_replaced_and_export_resumes() -> None:
    with OtlpHttpReceiver() as tempo:
        exporter = _exporter(tempo.base_url)
        try:
            first = exporter.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: _exited(first), "the killed child to be gone", timeout=10)
            assert exporter.export(_spans(2, "k")) is SpanExportResult.SUCCESS
            assert exporter.pid not in (None, first) and exporter.restarts == 1
        finally:
            exporter.shutdown()
        assert {"k0", "k1"} <= {s.attributes["llm.request_id"] for s in tempo.spans}


def test_a_child_that_dies_while_a_batch_waits_for_its_answer_costs_that_batch_only() -> None:
    with OtlpHttpReceiver(mode="hang") as tempo:
        exporter = ChildProcessExporter(
            resource=RESOURCE,
            telemetry_args={"export_timeout_s": 5.0},
            timeout_s=0.5,
            environ={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url},
            restart_backoff_s=0.0,
        )
        try:
            assert exporter.export(_spans(1, "stuck")) is SpanExportResult.FAILURE  # unanswered: still pending
            first = exporter.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: _exited(first), "the killed child to be gone", timeout=10)
            tempo.mode = "ok"
            tempo.release()
            assert exporter.export(_spans(2, "next")) is SpanExportResult.SUCCESS  # a new child took it
            assert exporter.restarts == 1 and exporter.pid != first
        finally:
            exporter.shutdown()
        assert {s.attributes["llm.request_id"] for s in tempo.spans} == {"next0", "next1"}  # "stuck" died with it


def test_a_child_whose_replica_stopped_listening_exits_quietly() -> None:
    """The replica gave up on a slow batch and closed the pipe it reads answers from: the child's answer has
    nowhere to go. It leaves at once with status 0 and no traceback in the replica's log."""
    with OtlpHttpReceiver(mode="hang") as tempo:
        child = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url},
        )
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        try:
            settings = {"resource": {"service.name": "router-test"}, "telemetry": {"export_timeout_s": 5.0}}
            write_frame(child.stdin, 0, settings)
            write_frame(child.stdin, 1, [span_record(s) for s in _spans(1, "late")])
            wait_for(lambda: tempo.held > 0, "the batch to reach the collector", timeout=20)
            child.stdout.close()  # the replica stops listening while the collector holds the batch
            tempo.mode = "ok"  # the exporter's retry gets through, and the child answers
            tempo.release()
            assert child.wait(timeout=20) == 0  # its stdin is still open: it left because the answer failed
            errors = child.stderr.read().decode()
        finally:
            child.kill()
            child.wait()
        assert "Traceback" not in errors and "BrokenPipe" not in errors


def test_shutdown_ends_the_child() -> None:
    with OtlpHttpReceiver() as tempo:
        exporter = _exporter(tempo.base_url)
        child = exporter.pid
        assert child is not None
        exporter.shutdown()
        assert _exited(child)
        assert exporter.export(_spans(1, "late")) is SpanExportResult.FAILURE


def test_the_child_exits_when_its_replica_is_killed() -> None:
    """SIGKILL gives the replica no chance to shut anything down: the child sees its stdin close and leaves."""
    with OtlpHttpReceiver() as tempo:
        script = textwrap.dedent(
            f"""
            import os, sys, time
            from opentelemetry.sdk.resources import Resource
            from serve_app.telemetry.export_process import WORKER_MODULE, ChildProcessExporter, span_record, write_frame
            e = ChildProcessExporter(resource=Resource({{}}), telemetry_args={{}}, timeout_s=1.0,
                                     environ={{**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "{tempo.base_url}"}})
            print(e.pid, flush=True)
            time.sleep(600)
            """
        )
        replica = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert replica.stdout is not None
            child = int(replica.stdout.readline())
            assert not _exited(child)
            replica.kill()
            replica.wait()
            wait_for(lambda: _exited(child), "the orphaned child to exit", timeout=20)
        finally:
            replica.kill()


async def test_telemetry_exports_through_the_child_by_default_and_counts_a_dead_collector_as_drops() -> None:
    with OtlpHttpReceiver() as tempo:
        telemetry = Telemetry.from_args(
            router_args(export_batch_size=4, export_schedule_delay_ms=50.0),
            meter=InMemoryMetricsSink(),
            langfuse=False,
            environ={"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url},
        )
        assert telemetry.args.telemetry.export_process
        for i in range(6):
            await one_request(telemetry, f"t{i}", usage={"prompt_tokens": 5, "completion_tokens": 2})
        telemetry.shutdown()
        assert sorted(s.attributes["llm.request_id"] for s in tempo.spans) == [f"t{i}" for i in range(6)]
    assert telemetry.metrics.dropped.get("otlp", 0) == 0
    with OtlpHttpReceiver(mode="refuse") as tempo:
        telemetry = Telemetry.from_args(
            router_args(export_batch_size=4, export_schedule_delay_ms=50.0, export_timeout_s=1.0),
            meter=InMemoryMetricsSink(),
            langfuse=False,
            environ={"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url},
        )
        for i in range(4):
            await one_request(telemetry, f"d{i}", usage={"prompt_tokens": 5, "completion_tokens": 2})
        telemetry.shutdown()
    assert telemetry.metrics.dropped["otlp"] == 4


def _exited(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (or already reaped): ask the kernel whether it still exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return _zombie(pid)
    return waited == pid


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_the_router_span_from_the_export_process_is_the_one_the_sdk_path_exports() -> None:
    """Default (a LightSpan rebuilt in the export process) against `export_process: false` (the SDK's span): the
    same span reaches the collector, and the `traceparent` sent upstream names it."""
    received = {}
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for export_process in (True, False):
        with OtlpHttpReceiver() as tempo:
            telemetry = Telemetry.from_args(
                router_args(export_process=export_process, export_schedule_delay_ms=50.0),
                meter=InMemoryMetricsSink(),
                langfuse=False,
                environ={"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url},
            )
            assert (telemetry.export_process is not None) is export_process
            obs = telemetry.begin(
                request_id="r1",
                headers={"traceparent": parent},
                requested_model="auto",
                stream=False,
                max_tokens=32,
                prompt_tokens_estimated=10,
                tenant="team-a",
            )
            upstream = obs.trace_headers()["traceparent"]
            obs.routed(backend="cloud", provider="anthropic", model="claude-sonnet-4-6", reason="x", fallback=True)
            obs.request_params(dropped=("seed",), translated=())
            await _finish_ok(obs, telemetry)
            telemetry.shutdown()
            (span,) = tempo.spans
        assert upstream == f"00-{span.trace_id}-{span.span_id}-01"
        assert span.trace_id == parent.split("-")[1] and span.parent_span_id == parent.split("-")[2]
        received[export_process] = span
    light, sdk = received[True], received[False]
    timing = {"llm.latency_ms", "llm.ttft_ms", "langfuse.observation.completion_start_time"}
    assert {k: v for k, v in light.attributes.items() if k not in timing} == {
        k: v for k, v in sdk.attributes.items() if k not in timing
    }
    assert set(light.attributes) == set(sdk.attributes) and len(light.attributes) > 25
    assert (light.name, light.scope, light.kind, light.status_code, light.resource) == (
        sdk.name,
        sdk.scope,
        sdk.kind,
        sdk.status_code,
        sdk.resource,
    )


async def _finish_ok(obs: Observation, telemetry: Telemetry) -> None:
    model = "claude-sonnet-4-6"
    usage = {"prompt_tokens": 5, "completion_tokens": 2}
    await finish(obs, telemetry, backend(usage, model=model), backend_name="cloud", model=model, outcome="ok")
