"""config: both Serve configs validate into the typed args, and every cross-field rule of RouterArgs holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import (
    CloudBackendArgs,
    LLMAppArgs,
    LocalBackendArgs,
    RouterArgs,
    RoutingRule,
    llm_deployment_name,
)

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIGS = ["serve_config.yaml", "serve_config.local.yaml"]
PRICE = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}


def app_args(config_name: str, app_name: str) -> dict[str, Any]:
    config = yaml.safe_load((REPO / config_name).read_text())
    (app,) = [a for a in config["applications"] if a["name"] == app_name]
    return app


def router(**overrides: Any) -> dict[str, Any]:
    """Valid router args with a price for every cloud model; `overrides` replace top-level keys."""
    args: dict[str, Any] = {
        "local": {"model_id": "local-model"},
        "cloud": {"model": "claude-sonnet-4-6", "extra_models": ["claude-haiku-4-5"]},
        "pricing": {
            "source": "test",
            "as_of": "2026-11-30",
            "models": {"claude-sonnet-4-6": PRICE, "claude-haiku-4-5": PRICE},
        },
    }
    args.update(overrides)
    return args


# ---- the shipped Serve configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_name", SERVE_CONFIGS)
def test_serve_config_router_args_validate(config_name):
    app = app_args(config_name, "router")
    assert app["import_path"] == "serve_app.app:build_app"
    args = RouterArgs.model_validate(app["args"])
    assert args.cloud.enabled and args.pricing is not None
    assert set(args.cloud.model_ids) <= set(args.pricing.models)


@pytest.mark.parametrize("config_name", SERVE_CONFIGS)
def test_serve_config_llm_args_validate(config_name):
    app = app_args(config_name, "llm")
    assert app["import_path"] == "serve_app.app:build_llm_app"
    assert app["route_prefix"] is None  # the model has no HTTP route of its own
    LLMAppArgs.model_validate(app["args"])


@pytest.mark.parametrize("config_name", SERVE_CONFIGS)
def test_serve_config_router_addresses_the_llm_app(config_name):
    router_args = RouterArgs.model_validate(app_args(config_name, "router")["args"])
    llm_args = LLMAppArgs.model_validate(app_args(config_name, "llm")["args"])
    assert router_args.local.app_name == "llm"
    assert router_args.local.model_id == llm_args.model_id
    assert router_args.local.deployment_name == llm_deployment_name(llm_args.model_id)
    assert router_args.local.context_window == llm_args.engine_kwargs["max_model_len"]


# ---- cross-field rules --------------------------------------------------------------------------------------------


def test_router_args_defaults_need_pricing():
    with pytest.raises(ValidationError, match="'pricing' is required"):
        RouterArgs.model_validate({})


def test_router_args_cloud_enabled_without_pricing_rejected():
    with pytest.raises(ValidationError, match="'pricing' is required when the cloud backend is enabled"):
        RouterArgs.model_validate(router(pricing=None))


def test_router_args_cloud_disabled_needs_no_pricing():
    args = RouterArgs.model_validate(router(cloud={"enabled": False}, pricing=None))
    assert args.pricing is None and not args.cloud.enabled


def test_router_args_price_missing_for_a_cloud_model_rejected():
    args = router(cloud={"model": "claude-sonnet-4-6", "extra_models": ["claude-haiku-4-5", "claude-opus-4-6"]})
    with pytest.raises(ValidationError, match=r"no price for cloud model\(s\) \['claude-opus-4-6'\]"):
        RouterArgs.model_validate(args)


def test_router_args_price_missing_for_the_default_cloud_model_rejected():
    args = router(cloud={"model": "claude-opus-4-6"})
    with pytest.raises(ValidationError, match="no price for cloud model"):
        RouterArgs.model_validate(args)


@pytest.mark.parametrize(
    ("local", "cloud"),
    [
        ({"model_id": "auto"}, {}),
        ({"model_id": "local"}, {}),
        ({"model_id": "cloud"}, {}),
        ({"model_id": "claude"}, {}),
        ({}, {"extra_models": ["claude"]}),
        ({"model_id": "claude-sonnet-4-6"}, {}),
        ({}, {"extra_models": ["claude-haiku-4-5", "auto"]}),
        ({}, {"extra_models": ["local"]}),
        ({}, {"extra_models": ["local-model"]}),
    ],
)
def test_router_args_model_id_clash_with_aliases_rejected(local, cloud):
    cloud_args = {"model": "claude-sonnet-4-6", **cloud}
    prices = {m: PRICE for m in CloudBackendArgs(**cloud_args).model_ids}
    args = router(
        local={"model_id": "local-model", **local},
        cloud=cloud_args,
        pricing={"source": "t", "as_of": "2026-11-30", "models": prices},
    )
    with pytest.raises(ValidationError, match="model ids must be distinct"):
        RouterArgs.model_validate(args)


def test_router_args_alias_as_local_model_rejected_even_without_cloud():
    with pytest.raises(ValidationError, match="model ids must be distinct"):
        RouterArgs.model_validate(router(local={"model_id": "auto"}, cloud={"enabled": False}, pricing=None))


@pytest.mark.parametrize(
    "args",
    [
        router(unknown=1),
        router(local={"model_id": "local-model", "gpu": "L4"}),
        router(cloud={"model": "claude-sonnet-4-6", "api_key": "sk-no-secrets-in-config"}),
        router(routing={"rulez": []}),
        router(routing={"rules": [{"name": "big", "backend": "cloud", "min_tokens": 5}]}),
        router(auth={"keys": ["k"]}),
        router(telemetry={"sample": 0.5}),
        router(pricing={"source": "t", "as_of": "x", "models": {}, "currency": "EUR"}),
        router(
            pricing={
                "source": "t",
                "as_of": "x",
                "models": {"claude-sonnet-4-6": {**PRICE, "batch": 1.0}, "claude-haiku-4-5": PRICE},
            }
        ),
    ],
    ids=["top", "local", "cloud", "routing", "rule", "auth", "telemetry", "pricing", "price"],
)
def test_router_args_unknown_fields_rejected(args):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        RouterArgs.model_validate(args)


def test_llm_app_args_unknown_fields_rejected():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        LLMAppArgs.model_validate({"model_id": "m", "max_model_len": 512})


@pytest.mark.parametrize(
    "args",
    [
        router(max_request_bytes=1023),
        router(local={"model_id": "m", "context_window": 15}),
        router(local={"model_id": "m", "saturation_inflight": 0}),
        router(cloud={"model": "claude-sonnet-4-6", "max_retries": 11}),
        router(telemetry={"sampling_ratio": 1.5}),
        router(routing={"chars_per_token": 0}),
    ],
    ids=["max_request_bytes", "context_window", "saturation", "max_retries", "sampling", "chars_per_token"],
)
def test_router_args_out_of_range_values_rejected(args):
    with pytest.raises(ValidationError):
        RouterArgs.model_validate(args)


@pytest.mark.parametrize("name", ["Big", "with-dash", "", "x" * 33])
def test_routing_rule_name_pattern(name):
    with pytest.raises(ValidationError):
        RoutingRule(name=name, backend="cloud")


def test_router_args_are_frozen():
    args = RouterArgs.model_validate(router())
    with pytest.raises(ValidationError):
        args.max_request_bytes = 10  # type: ignore[misc]


def test_cloud_model_ids_default_first_without_duplicates():
    args = CloudBackendArgs(model="claude-haiku-4-5", extra_models=["claude-sonnet-4-6", "claude-haiku-4-5"])
    assert args.model_ids == ["claude-haiku-4-5", "claude-sonnet-4-6"]


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("local-model", "LLMServer:local-model"),
        ("qwen2.5-7b-instruct", "LLMServer:qwen2_5-7b-instruct"),
        ("Qwen/Qwen2.5-7B-Instruct", "LLMServer:Qwen--Qwen2_5-7B-Instruct"),
    ],
)
def test_llm_deployment_name_as_serve_llm_derives_it(model_id, name):
    assert llm_deployment_name(model_id) == name
    assert LocalBackendArgs(model_id=model_id).deployment_name == name
