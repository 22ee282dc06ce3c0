"""Baseline Serve application for the local benchmark: Ray Serve LLM's own OpenAiIngress in front of our LLMServer.

The issue's second "direct path": the same LLMServer deployment (same engine, same replica) reached over HTTP
through Ray Serve LLM's stock OpenAI ingress instead of the router. It pays what the router pays for being a
Serve application (the HTTP ingress, an ingress replica, the DeploymentHandle hop to the model) and nothing
the router adds on top (auth, validation, routing, translation, telemetry), so router minus ingress is the
router's own cost on the local path. `bench.common.session()` deploys it at INGRESS_PREFIX when the model is
deployed.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard  # not re-exported publicly
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

from serve_app.config import llm_deployment_name


class RayIngress(OpenAiIngress):
    """OpenAiIngress whose one model is the `llm` application's LLMServer, looked up by name in the replica."""

    def __init__(self, model_id: str, app_name: str) -> None:
        handle = serve.get_deployment_handle(llm_deployment_name(model_id), app_name=app_name, _check_exists=False)
        card = ModelCard(id=model_id, object="model", owned_by="bench", permission=[], metadata={"model_id": model_id})
        super().__init__(llm_deployments={model_id: handle}, model_cards={model_id: card})


def build(args: dict[str, Any]) -> serve.Application:
    deployment = serve.deployment(make_fastapi_ingress(RayIngress), name="RayIngress")
    return deployment.bind(str(args.get("model_id", "local-model")), str(args.get("app_name", "llm")))
