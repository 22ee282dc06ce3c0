"""One real platform per test session: Ray + both Serve applications + stand-ins for what cannot run here.

Stand-ins speak their real wire formats on loopback: the Anthropic Messages API, an OTLP/HTTP collector
and Langfuse's OTLP ingestion endpoint. Everything else is real: Ray Serve, Ray Serve LLM with vLLM on the
CPU, the router, and the official `openai` and `anthropic` SDKs as clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.langfuse_standin import LangfuseStandin
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.ray_platform import RayPlatform

API_KEY = "sk-test-router-key"
ANTHROPIC_KEY = "sk-ant-test-upstream-key"
LANGFUSE_PUBLIC = "pk-lf-test"
LANGFUSE_SECRET = "sk-lf-test"

pytestmark = pytest.mark.integration


@dataclass
class Platform:
    ray: RayPlatform
    anthropic: AnthropicStandIn
    otlp: OtlpHttpReceiver
    langfuse: LangfuseStandin
    api_key: str = API_KEY

    @property
    def base_url(self) -> str:
        return self.ray.base_url

    def openai(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, max_retries=0, **kwargs)

    def async_openai(self, **kwargs: object) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, max_retries=0, **kwargs)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    anthropic_standin = AnthropicStandIn(api_key=ANTHROPIC_KEY, token_delay_s=0.005).start()
    otlp = OtlpHttpReceiver().__enter__()
    langfuse = LangfuseStandin(public_key=LANGFUSE_PUBLIC, secret_key=LANGFUSE_SECRET).__enter__()
    ray = RayPlatform(
        workdir=tmp_path_factory.mktemp("platform"),
        env={
            "RAY_SERVE_ENABLE_HA_PROXY": "1",  # the ingress `make serve` and the RayService use
            "HYBRID_LLM_API_KEYS": f"{API_KEY},sk-second-key",
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": anthropic_standin.base_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.base_url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "LANGFUSE_PUBLIC_KEY": LANGFUSE_PUBLIC,
            "LANGFUSE_SECRET_KEY": LANGFUSE_SECRET,
            "LANGFUSE_BASE_URL": langfuse.base_url,
            "LANGFUSE_FLUSH_INTERVAL": "0.2",
        },
        # The stand-in answers at once; retries would only slow the fault tests down.
        overrides={
            "cloud": {"max_retries": 0, "timeout_s": 5},
            "routing": {"rules": [{"name": "big_output", "backend": "cloud", "min_output_tokens": 100}]},
        },
    )
    try:
        ray.start()
        yield Platform(ray=ray, anthropic=anthropic_standin, otlp=otlp, langfuse=langfuse)
    finally:
        ray.stop()
        anthropic_standin.stop()
        otlp.__exit__(None, None, None)
        langfuse.__exit__(None, None, None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start a cluster of their own run before the session's platform starts, never beside it: two Ray
    Serve clusters on one machine share the replicas' direct-ingress ports (SO_REUSEPORT from a fixed range), so the
    kernel would split one cluster's requests between both."""
    items.sort(key=lambda item: "platform" in getattr(item, "fixturenames", ()))
