"""The router's FastAPI app in-process over FakeBackends: real ChatService, real Telemetry (in memory), no Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.auth import ApiKeys
from serve_app.backends.base import Backend
from serve_app.chat import ChatService
from serve_app.config import AuthArgs, RouterArgs
from serve_app.ingress import create_app
from serve_app.ledger import LedgerCore, ProcessLedger
from serve_app.prompt_tokens import PromptCounter
from serve_app.telemetry import InMemoryMetricsSink, Telemetry
from serve_app.tenancy import Tenancy
from tests.component.fakes import API_KEY, FakeBackend, cloud_backend, local_backend, router_args

BASE_URL = "http://router.test"


@dataclass
class Router:
    """One app under test and everything a test inspects: the fakes, metrics and spans."""

    app: FastAPI
    service: ChatService
    telemetry: Telemetry
    metrics: InMemoryMetricsSink
    spans: InMemorySpanExporter
    local: Backend
    cloud: Backend | None
    tenancy: Tenancy | None = None
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, *, api_key: str | None = API_KEY, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
        """An httpx client on the app; `raise_app_exceptions=False` shows what a server would have sent."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=raise_app_exceptions)
        client = httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers)
        self.clients.append(client)
        return client

    def openai(self, *, api_key: str = API_KEY) -> openai.AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app))
        self.clients.append(http)
        return openai.AsyncOpenAI(api_key=api_key, base_url=f"{BASE_URL}/v1", http_client=http, max_retries=0)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()
        self.telemetry.shutdown()


MakeRouter = Callable[..., Router]


def build_router(
    *,
    local: Backend | None = None,
    cloud: Backend | bool | None = True,
    args: RouterArgs | None = None,
    keys: ApiKeys | None = None,
    cloud_standin: bool = False,
    local_rate: Callable[[], float | None] | None = None,
    tenancy: bool = False,
    clock: Callable[[], float] | None = None,
    prompt_counter: PromptCounter | None = None,
) -> Router:
    """`cloud=True`: a ready FakeBackend; `cloud=None`: no cloud backend; else the given backend. `tenancy`: tenant
    limits enforced with the in-process ledger (its clock: `clock`)."""
    args = args or router_args()
    local = local or local_backend()
    cloud_backend_ = cloud_backend() if cloud is True else (cloud or None)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = InMemoryMetricsSink()
    telemetry = Telemetry.from_args(args, tracer_provider=provider, meter=metrics, langfuse=False, environ={})
    backends: dict[str, Backend] = {"local": local}
    if cloud_backend_ is not None:
        backends["cloud"] = cloud_backend_
    keys = keys or ApiKeys.load(AuthArgs(), environ={"HYBRID_LLM_API_KEYS": API_KEY})
    tenants = None
    if tenancy:
        extra = {"clock": clock} if clock else {}
        ledger = ProcessLedger(LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30, **extra))
        tenants = Tenancy(args, ledger=ledger, metrics=metrics, file_limits=keys.file_limits, **extra)
    service = ChatService(
        args,
        backends=backends,
        telemetry=telemetry,
        local_rate=local_rate,
        tenancy=tenants,
        prompt_counter=prompt_counter,
    )
    app = create_app(service, keys=keys, max_request_bytes=args.max_request_bytes, cloud_standin=cloud_standin)
    return Router(app, service, telemetry, metrics, exporter, local, cloud_backend_, tenants)


@pytest_asyncio.fixture(loop_scope="function")
async def make_router() -> AsyncIterator[MakeRouter]:
    made: list[Router] = []

    def make(**kwargs: Any) -> Router:
        router = build_router(**kwargs)
        made.append(router)
        return router

    yield make
    for router in made:
        await router.close()


@pytest.fixture
def local() -> FakeBackend:
    return local_backend()


@pytest.fixture
def cloud() -> FakeBackend:
    return cloud_backend()


@pytest_asyncio.fixture(loop_scope="function")
async def router(make_router: MakeRouter, local: FakeBackend, cloud: FakeBackend) -> Router:
    return make_router(local=local, cloud=cloud)


@pytest_asyncio.fixture(loop_scope="function")
async def client(router: Router) -> httpx.AsyncClient:
    return router.client()
