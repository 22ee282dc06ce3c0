"""Builders named by serve_config.yaml's import paths: `build_app` (the router) and `build_llm_app` (the model).

Each validates its args once into typed config. `build_llm_app` is the only place that imports Ray Serve
LLM (and so vLLM); the router application never does.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray.serve import Application

from serve_app.config import LLMAppArgs, RouterArgs, llm_deployment_name

logger = logging.getLogger(__name__)

LOCAL_MODEL_ENV = "LOCAL_MODEL"


def build_app(args: dict[str, Any]) -> Application:
    """The router application: the HTTP ingress that routes between the local model and Anthropic."""
    router_args = RouterArgs.model_validate(args)
    from serve_app.router_deployment import RouterDeployment

    return RouterDeployment.options(**router_args.deployment).bind(router_args)


def build_llm_app(args: dict[str, Any]) -> Application:
    """The local model application: Ray Serve LLM's LLMServer (as RouterLLMServer) on vLLM, no HTTP route."""
    llm_args = LLMAppArgs.model_validate(args)
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from serve_app.engine import RouterLLMServer
    from serve_app.telemetry.gpu import PRICE_KEY as GPU_PRICE_KEY
    from serve_app.telemetry.gpu import WINDOW_KEY as GPU_WINDOW_KEY

    llm_config = LLMConfig(
        model_loading_config={"model_id": llm_args.model_id, "model_source": resolve_model_source(llm_args)},
        engine_kwargs=dict(llm_args.engine_kwargs),
        accelerator_type=llm_args.accelerator_type,
        placement_group_config=llm_args.placement_group_config,
        deployment_config=dict(llm_args.deployment_config),
        experimental_configs={
            "stream_batching_interval_ms": llm_args.stream_batching_interval_ms,
            GPU_PRICE_KEY: llm_args.gpu_usd_per_hour,
            GPU_WINDOW_KEY: llm_args.gpu_window_s,
        },
        runtime_env={"env_vars": dict(llm_args.env_vars)} if llm_args.env_vars else None,
        log_engine_metrics=True,
    )
    return build_llm_deployment(
        llm_config,
        deployment_cls=RouterLLMServer,
        override_serve_options={"name": llm_deployment_name(llm_args.model_id)},
    )


SMOKE = "smoke"  # LOCAL_MODEL value that selects the generated smoke model


def resolve_model_source(llm_args: LLMAppArgs) -> str:
    """The configured model, else LOCAL_MODEL (`smoke`: the smoke model), else the default SmolLM2-135M-Instruct."""
    source = llm_args.model_source or os.environ.get(LOCAL_MODEL_ENV, "").strip()
    if source == SMOKE:
        from serve_app.smoke_model import ensure_smoke_model

        path = ensure_smoke_model()
        logger.warning(
            "\n%s\nserving the generated SMOKE MODEL from %s (%s=%s).\n"
            "Its output is RANDOM TOKENS. Unset %s for the default model, or set it to a Hugging Face id or path.\n%s",
            "!" * 78,
            path,
            LOCAL_MODEL_ENV,
            SMOKE,
            LOCAL_MODEL_ENV,
            "!" * 78,
        )
        return str(path)
    if source:
        return source
    from serve_app.default_model import ensure_default_model

    return str(ensure_default_model())
