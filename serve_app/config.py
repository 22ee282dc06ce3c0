"""Typed arguments of both Serve applications, validated once by the builders; no I/O, no env reads.

Secrets (API keys) never appear here: they come from the environment or mounted Secret files, read by the
process that needs them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def llm_deployment_name(model_id: str) -> str:
    """The LLMServer deployment's name, as Ray Serve LLM derives it; the router addresses it by this name."""
    return "LLMServer:" + model_id.replace("/", "--").replace(".", "_")


class LocalBackendArgs(_Args):
    app_name: str = Field(default="llm", description="Serve application whose ingress is the LLMServer.")
    model_id: str = Field(default="local-model", description="Model id the LLMServer serves (LLMConfig model_id).")
    context_window: int = Field(default=4096, ge=16, description="The engine's max_model_len, in tokens.")
    saturation_inflight: int = Field(
        default=32, ge=1, description="Router-side in-flight local requests at which `auto` spills to the cloud."
    )
    first_chunk_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for the first chunk before the call counts as failed."
    )
    chunk_timeout_s: float = Field(default=60.0, gt=0, description="Longest gap between two chunks of a stream.")
    handle_transport: Literal["ray", "grpc"] = Field(
        default="ray",
        description="How the router's DeploymentHandle reaches the model replica: `ray` (Ray's streaming generator, "
        "Serve's default) or `grpc` (Serve's inter-deployment gRPC, the handle option `_by_reference=False`).",
    )
    cost_rate_max_age_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long the model replica's last reported USD per token prices counterfactual local cost; "
        "older, it is unknown until the next local request reports a fresh one.",
    )

    @property
    def deployment_name(self) -> str:
        return llm_deployment_name(self.model_id)


class CloudBackendArgs(_Args):
    enabled: bool = Field(default=True, description="Whether the Anthropic backend exists at all.")
    model: str = Field(default="claude-sonnet-4-6", description="Model `cloud` and `auto` requests use.")
    extra_models: list[str] = Field(default_factory=list, description="Other Anthropic model ids clients may name.")
    default_max_tokens: int = Field(
        default=4096, ge=1, description="`max_tokens` sent when the client gives none (Anthropic requires one)."
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Whole-request timeout of the Anthropic client.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP/TLS connect timeout.")
    max_retries: int = Field(default=2, ge=0, le=10, description="SDK retries (honouring retry-after).")
    base_url: str | None = Field(default=None, description="Overrides ANTHROPIC_BASE_URL when set.")
    cache_system_prompt_min_tokens: int | None = Field(
        default=None,
        ge=1,
        description="On the OpenAI route, a system prompt at least this long (estimated tokens) gets a prompt-cache "
        "breakpoint (`cache_control: ephemeral`), so repeats read it at the cache price. None: only the client's "
        "own `cache_control` breakpoints. Anthropic caches nothing below the model's minimum (1024-4096 tokens).",
    )
    http_client: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp",
        description="HTTP transport under the Anthropic SDK: `aiohttp` (the SDK's DefaultAioHttpClient; 23-31% less "
        "router CPU per request, docs/benchmarks.md) or `httpx` (the SDK's default transport). On aiohttp, DNS "
        "lookups count against `timeout_s` rather than `connect_timeout_s`, and no TCP keepalive is set.",
    )

    @property
    def model_ids(self) -> list[str]:
        return [self.model, *(m for m in self.extra_models if m != self.model)]


class RoutingRule(_Args):
    """A configured rule for `auto`: the first matching rule sends the request to `backend`."""

    name: str = Field(description="Recorded as the route reason `rule_<name>`.", pattern=r"^[a-z0-9_]{1,32}$")
    backend: Literal["local", "cloud"]
    min_prompt_tokens: int | None = Field(default=None, ge=0, description="Match prompts at least this long.")
    min_output_tokens: int | None = Field(default=None, ge=0, description="Match output budgets at least this big.")
    has_tools: bool | None = Field(default=None, description="Match requests with (True) or without tools.")
    has_images: bool | None = Field(default=None, description="Match requests with (True) or without images.")


class RoutingPolicy(_Args):
    max_local_prompt_tokens: int | None = Field(
        default=None, ge=1, description="Longest estimated prompt for local; default: context window minus output."
    )
    max_local_output_tokens: int | None = Field(
        default=None, ge=1, description="Largest output budget for local; default: half the context window."
    )
    default_local_output_tokens: int = Field(
        default=256, ge=1, description="Output budget assumed when a local-bound request gives none."
    )
    chars_per_token: float = Field(default=3.5, gt=0, description="Cheap prompt-length estimate, characters per token.")
    tokenizer: str | None = Field(
        default=None,
        description="The local model's tokenizer, for exact prompt counts near the local limit: a directory with "
        "tokenizer.json (or the file), a Hugging Face id found in this machine's HF cache, or `auto` (the model "
        "LOCAL_MODEL selects, as the local profile's model application resolves it, when its files are on the "
        "router's machine). Null, or not found: the cheap estimate only (said once in the log and in /readyz).",
    )
    exact_count_above: float = Field(
        default=2.0,
        ge=1,
        description="A cheap estimate above this multiple of the local prompt budget is too long without an exact "
        "count (the upper edge of the band where the tokenizer counts).",
    )
    exact_count_below: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="The lower edge of that band, as a multiple of the budget: below it the cheap estimate decides. "
        "Null: the tokenizer counts unless even one token per UTF-8 byte fits the budget (never lets a prompt "
        "through that is too long; costs more counts where the window is small).",
    )
    local_tools: bool = Field(
        default=False, description="The local engine parses tool calls (vLLM tool_call_parser); else tools go cloud."
    )
    images_go_cloud: bool = Field(default=True, description="The local model is text-only: images go to the cloud.")
    rules: list[RoutingRule] = Field(default_factory=list, description="Evaluated in order before the built-ins.")
    fallback: bool = Field(default=True, description="Retry on the other backend after a failure before first byte.")
    local_pin: Literal["fallback", "strict"] = Field(
        default="fallback",
        description="What the `local` alias does while the local model is not serving or is saturated: `fallback` "
        "(the cloud answers, route reason fallback_local_not_ready / fallback_local_saturated; a failure before the "
        "first byte also falls back) or `strict` (503 with Retry-After while not serving; queued when saturated). "
        "The concrete local model id is always strict.",
    )


class AuthArgs(_Args):
    api_keys_file: str | None = Field(
        default=None,
        description="Keys file (a mounted Secret), merged with HYBRID_LLM_API_KEYS: one `KEY` or `TENANT:KEY` per line "
        "(or comma-separated), or YAML with a `tenants:` mapping (keys, key hashes and limits per tenant).",
    )
    allow_unauthenticated: bool = Field(
        default=False, description="Serve /v1 without keys (also HYBRID_LLM_ALLOW_UNAUTHENTICATED=1). Logs a warning."
    )


TENANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEFAULT_TENANT = "default"  # the tenant of a key given without a name


class SpendLimit(_Args):
    """A USD limit on cloud spend and what happens to a cloud request over it. A bare number means `reject`."""

    usd: float = Field(gt=0, description="USD of cloud spend allowed in the window.")
    over: Literal["reject", "local"] = Field(
        default="reject",
        description="Over the limit: `reject` (429 with Retry-After) or `local` (the local model answers where the "
        "request suits it and the client asked for `auto`; otherwise 429).",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, data: Any) -> Any:
        return {"usd": data} if isinstance(data, int | float) and not isinstance(data, bool) else data


class TenantLimits(_Args):
    """One tenant's limits; None: unlimited. Windows are UTC: the clock minute, day and calendar month."""

    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests admitted per minute.")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="Tokens per minute on either backend (prompt + output)."
    )
    local_tokens_per_minute: int | None = Field(
        default=None, ge=1, description="Tokens per minute on the local model (its share of the GPU)."
    )
    usd_per_day: SpendLimit | None = Field(default=None, description="Cloud USD per UTC day.")
    usd_per_month: SpendLimit | None = Field(default=None, description="Cloud USD per UTC calendar month.")


class LedgerArgs(_Args):
    mode: Literal["actor", "process"] = Field(
        default="actor",
        description="`actor`: counters in one named Ray actor shared by every router replica (leases, snapshots); "
        "`process`: counters in this process only (tests, the dev server, one replica).",
    )
    actor_name: str = Field(default="hybrid-llm-ledger", description="Name of the detached ledger actor.")
    namespace: str = Field(default="hybrid-llm", description="Ray namespace of the ledger actor.")
    snapshot_path: str | None = Field(
        default=None, description="File (a volume) the ledger writes its counters to and restores them from."
    )
    snapshot_interval_s: float = Field(default=5.0, gt=0, description="Seconds between ledger snapshots.")
    sync_interval_s: float = Field(
        default=1.0, gt=0, description="Seconds between a replica's reports of settled spend to the ledger."
    )
    lease_fraction: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Share of a limit a replica leases at once; it admits requests against its lease without a "
        "remote call. Near the limit a lease is what remains.",
    )
    lease_ttl_s: float = Field(
        default=30.0, gt=0, description="A replica silent this long loses its unused leases (it died)."
    )
    actor_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray resources of the ledger actor, to place it where `snapshot_path` is mounted (on KubeRay "
        "the head: {'node:__internal_head__': 0.001}).",
    )


class TenantsArgs(_Args):
    limits: dict[str, TenantLimits] = Field(
        default_factory=dict,
        description="Tenant name -> limits (`default`: keys without a name). These names are also the closed set "
        "of the `tenant` metric label; any other tenant is labelled `other`.",
    )
    cloud_usd_per_hour: SpendLimit | None = Field(
        default=None, description="Global cloud USD per UTC clock hour, all tenants together."
    )
    ledger: LedgerArgs = Field(default_factory=LedgerArgs)

    @model_validator(mode="after")
    def _names(self) -> TenantsArgs:
        bad = [name for name in self.limits if not re.match(TENANT_NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"tenant names {bad} must match {TENANT_NAME_PATTERN}")
        return self


class ModelPrice(_Args):
    """List prices in USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(ge=0, description="5-minute cache write.")
    cache_read: float = Field(ge=0)


class PricingArgs(_Args):
    source: str = Field(description="Where the prices come from.")
    as_of: str = Field(description="Date the prices were checked (YYYY-MM-DD).")
    models: dict[str, ModelPrice] = Field(description="Anthropic model id -> price.")

    @model_validator(mode="before")
    @classmethod
    def _gpu_price_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and ({"gpu_usd_per_hour", "gpu_window_s"} & data.keys()):
            raise ValueError(
                "gpu_usd_per_hour and gpu_window_s belong to the llm application's args now (each model replica "
                "accounts for its own GPU, whatever the number of routers); remove them from the router's pricing"
            )
        return data


class TelemetryArgs(_Args):
    service_name: str = Field(default="hybrid-llm-router", description="OTel service.name (OTEL_SERVICE_NAME wins).")
    environment: str = Field(default="local", description="deployment.environment.name in traces and Langfuse.")
    tracing: bool = Field(default=True, description="Export spans when an OTLP endpoint is configured.")
    sampling_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Trace-id ratio for requests that start a trace (no `traceparent`); a sampled parent is "
        "followed, and an unsampled one never drops the span (it is also the Langfuse generation). Below 1, "
        "Langfuse generations thin too.",
    )
    capture_content: bool = Field(default=False, description="Put prompt and completion text on spans (opt-in).")
    langfuse: bool = Field(default=True, description="Send generations to Langfuse when its keys are set.")
    export_queue_size: int = Field(default=2048, ge=16, description="Span queue bound; beyond it spans are dropped.")
    export_timeout_s: float = Field(default=5.0, gt=0, description="Exporter request timeout.")
    export_batch_size: int = Field(
        default=64,
        ge=1,
        description="Spans per export request (OTLP and Langfuse). Small batches keep each encode short: the "
        "export thread holds the replica's GIL while it encodes a batch (docs/benchmarks.md, telemetry).",
    )
    export_schedule_delay_ms: float = Field(
        default=200.0, gt=0, description="Longest wait before a partial batch is exported."
    )
    export_process: bool = Field(
        default=True,
        description="Encode and send OTLP spans in a child process of the replica (the replica only pickles each "
        "batch), so the encoder never holds the GIL the request loop needs; false: in the replica's export thread. "
        "Without the direct Langfuse exporter the router span is then kept as plain values in the replica and "
        "built as the SDK's span in that process (serve_app/telemetry/light_span.py).",
    )
    http_client_spans: bool = Field(
        default=False,
        description="A CLIENT span per upstream HTTP call (Anthropic), child of the router span: Tempo's service "
        "graph draws the router -> anthropic edge from it. Off, `traceparent` still goes upstream, naming the "
        "router span as the parent.",
    )
    request_log_path: str | None = Field(
        default=None,
        description="Append one JSON request record per request to this file (policy replay; no prompt or "
        "completion text); null: off.",
    )
    request_log_queue_size: int = Field(
        default=10_000, ge=16, description="Request records waiting for the writer; beyond it they are dropped."
    )


class RouterArgs(_Args):
    """Arguments of the router application (`serve_app.app:build_app`)."""

    local: LocalBackendArgs = Field(default_factory=LocalBackendArgs)
    cloud: CloudBackendArgs = Field(default_factory=CloudBackendArgs)
    routing: RoutingPolicy = Field(default_factory=RoutingPolicy)
    auth: AuthArgs = Field(default_factory=AuthArgs)
    pricing: PricingArgs | None = Field(default=None, description="Price table; required when cloud is enabled.")
    telemetry: TelemetryArgs = Field(default_factory=TelemetryArgs)
    tenants: TenantsArgs = Field(default_factory=TenantsArgs, description="Tenants' limits and the spend ledger.")
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    deployment: dict[str, Any] = Field(
        default_factory=dict, description="Serve options for the router deployment (num_replicas, ...)."
    )
    debug_introspection: bool = Field(
        default=False,
        description="Answer `debug_counts` (the replica's asyncio task count) over a DeploymentHandle, for "
        "bench/soak.py; never an HTTP route.",
    )

    @model_validator(mode="after")
    def _check(self) -> RouterArgs:
        if self.cloud.enabled and self.pricing is None:
            raise ValueError("'pricing' is required when the cloud backend is enabled")
        if self.pricing is not None and self.cloud.enabled:
            missing = [m for m in self.cloud.model_ids if m not in self.pricing.models]
            if missing:
                raise ValueError(f"no price for cloud model(s) {missing}")
        aliases = {"auto", "local", "cloud", "claude"}
        clash = set(self.cloud.model_ids) & ({self.local.model_id} | aliases)
        if clash or self.local.model_id in aliases:
            raise ValueError(f"model ids must be distinct from each other and the aliases: {sorted(clash)}")
        return self


class LLMAppArgs(_Args):
    """Arguments of the local model application (`serve_app.app:build_llm_app`)."""

    model_id: str = Field(default="local-model", description="Served model id; the router's local.model_id.")
    model_source: str | None = Field(
        default=None,
        description=(
            "Hugging Face id or path. Unset: LOCAL_MODEL (`smoke`: the generated smoke model, random output), "
            "else the default SmolLM2-135M-Instruct, converted once into the cache."
        ),
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vLLM engine arguments.")
    accelerator_type: str | None = Field(default=None, description="Ray accelerator type (e.g. L4); None on CPU.")
    placement_group_config: dict[str, Any] | None = Field(
        default=None, description="Ray placement group for the engine; CPU needs {bundles: [{CPU: 1}]}."
    )
    deployment_config: dict[str, Any] = Field(default_factory=dict, description="Serve options of the LLMServer.")
    stream_batching_interval_ms: float = Field(
        default=0.0, ge=0, description="LLMServer chunk batching; 0 sends every chunk at once (lowest TTFT)."
    )
    env_vars: dict[str, str] = Field(default_factory=dict, description="Non-secret env of the engine replica.")
    gpu_usd_per_hour: float = Field(
        default=0.0, ge=0, description="Price of one model replica's GPU per hour; 0 turns local cost off."
    )
    gpu_window_s: float = Field(default=300.0, gt=0, description="Window over which GPU time is spread over tokens.")
