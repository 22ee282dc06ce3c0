"""The closed cluster (issue 12, defect 1): Ray token auth, NetworkPolicies, secrets only in the router's pods,
no instance metadata or node-role AWS permissions for pods, restricted pods, images by digest, bounded volumes."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess

import pytest
import yaml
from deploy_support import REPO, load_yaml_docs
from netpol import Endpoint, allowed

from kuberay import render

NS = "hybrid-llm"
RAY = {"ray.io/is-ray-node": "yes"}
HEAD = Endpoint("192.168.100.10", NS, {**RAY, "ray.io/node-type": "head", "hybrid-llm/role": "head"})
ROUTER = Endpoint("192.168.101.20", NS, {**RAY, "ray.io/node-type": "worker", "hybrid-llm/role": "router"})
MODEL = Endpoint("192.168.130.30", NS, {**RAY, "ray.io/node-type": "worker", "hybrid-llm/role": "model"})
OPERATOR = Endpoint("192.168.102.5", "kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
PROMETHEUS = Endpoint("192.168.103.6", "monitoring", {"app.kubernetes.io/name": "prometheus"})
COLLECTOR = Endpoint("192.168.103.7", "monitoring", {"app.kubernetes.io/name": "opentelemetry-collector"})
DNS = Endpoint("192.168.104.2", "kube-system", {"k8s-app": "kube-dns"})
LANGFUSE = Endpoint("192.168.105.3", "langfuse", {"app.kubernetes.io/name": "langfuse"})
# Any other pod: another team's workload, a compromised sidecar, a debug pod in the app's own namespace.
STRANGER = Endpoint("192.168.110.9", "default", {"app": "anything"})
NEIGHBOUR = Endpoint("192.168.110.10", NS, {"app": "debug"})
ALB = Endpoint("192.168.33.44")  # an ALB ENI in a public subnet
NODE = Endpoint("192.168.120.1")  # a node (or anything else) in a private subnet
IMDS = Endpoint("169.254.169.254")
INTERNET = Endpoint("160.79.104.10")  # an Anthropic / Hugging Face address
RAY_PORTS = [6379, 8265, 10001, 8000, 52365, 8076, 10002, 8080]
METRICS_PORTS = [8080, 44217, 44227]


@pytest.fixture(scope="module")
def policies() -> list[dict]:
    docs = load_yaml_docs(REPO / "kuberay" / "networkpolicies.yaml")
    assert docs and all(d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == NS for d in docs)
    return docs


@pytest.fixture(scope="module")
def eksctl() -> dict:
    (doc,) = load_yaml_docs(REPO / "cluster" / "eksctl-cluster.yaml")
    return doc


def _cluster(rs: dict) -> dict:
    return rs["spec"]["rayClusterConfig"]


def _templates(rs: dict) -> dict[str, dict]:
    cluster = _cluster(rs)
    out = {"head": cluster["headGroupSpec"]["template"]}
    out |= {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}
    return out


def _secret_refs(spec: dict) -> set[str]:
    refs = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for container in spec["containers"] + spec.get("initContainers", []):
        for env in container.get("env", []):
            if ref := (env.get("valueFrom") or {}).get("secretKeyRef"):
                refs.add(ref["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                refs.add(source["secretRef"]["name"])
    return refs


def _dry_run(*args: str, **env: str) -> str:
    done = subprocess.run(
        ["bash", str(REPO / "cluster" / "deploy.sh"), *args],
        env={**os.environ, "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- Ray token auth -------------------------------------------------------------------------------------------


def test_ray_token_auth_is_on_with_the_token_from_a_secret_deploy_creates(rayservice):
    cluster = _cluster(rayservice)
    assert cluster["authOptions"] == {"mode": "token", "secretName": "ray-auth-token"}
    # KubeRay refuses token auth below Ray 2.52.
    assert tuple(map(int, cluster["rayVersion"].split("."))) >= (2, 52, 0)
    # KubeRay injects RAY_AUTH_MODE/RAY_AUTH_TOKEN unless a container already sets them: none may.
    for name, template in _templates(rayservice).items():
        for container in template["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, name
    assert "ray-auth-token -n hybrid-llm --from-env-file=/dev/stdin  # keys: auth_token" in _dry_run("secrets")


# --- NetworkPolicies ------------------------------------------------------------------------------------------


def test_network_policies_deny_by_default_in_both_directions(policies):
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and "egress" not in p["spec"] for p in deny)
    for other in (STRANGER, NEIGHBOUR):
        assert not allowed(policies, other, NEIGHBOUR if other is STRANGER else STRANGER, 80)


@pytest.mark.parametrize("port", RAY_PORTS)
@pytest.mark.parametrize("target", [HEAD, ROUTER, MODEL], ids=["head", "router", "model"])
def test_no_pod_outside_ray_reaches_a_ray_port(policies, target, port):
    for source in (STRANGER, NEIGHBOUR, LANGFUSE, COLLECTOR):
        assert not allowed(policies, source, target, port), (source, port)


@pytest.mark.parametrize("port", RAY_PORTS)
def test_ray_pods_reach_each_other_on_any_port(policies, port):
    for source, target in [(ROUTER, HEAD), (MODEL, HEAD), (HEAD, ROUTER), (ROUTER, MODEL), (MODEL, ROUTER)]:
        assert allowed(policies, source, target, port)


def test_the_operator_reaches_the_dashboard_and_the_head_proxy_only(policies):
    assert allowed(policies, OPERATOR, HEAD, 8265) and allowed(policies, OPERATOR, HEAD, 8000)
    for port in (6379, 10001, 8080):
        assert not allowed(policies, OPERATOR, HEAD, port)
    assert not allowed(policies, OPERATOR, ROUTER, 8265)


def test_metrics_only_from_prometheus_in_monitoring(policies):
    for port in METRICS_PORTS:
        assert allowed(policies, PROMETHEUS, HEAD, port)
    assert allowed(policies, PROMETHEUS, ROUTER, 8080) and allowed(policies, PROMETHEUS, MODEL, 8080)
    for port in (8265, 6379, 8000, 10001):
        assert not allowed(policies, PROMETHEUS, HEAD, port)
    assert not allowed(policies, COLLECTOR, ROUTER, 8080)


def test_serve_port_only_from_the_alb_subnets(policies):
    assert allowed(policies, ALB, ROUTER, 8000)
    assert not allowed(policies, ALB, ROUTER, 8265) and not allowed(policies, ALB, HEAD, 6379)
    assert not allowed(policies, NODE, ROUTER, 8000)
    assert not allowed(policies, STRANGER, ROUTER, 8000)


def test_alb_cidrs_are_the_public_subnets_eksctl_creates_and_hold_no_pod(policies, eksctl):
    (policy,) = [p for p in policies if p["metadata"]["name"] == "ray-serve-from-alb"]
    blocks = {ipaddress.ip_network(peer["ipBlock"]["cidr"]) for peer in policy["spec"]["ingress"][0]["from"]}
    vpc = ipaddress.ip_network(eksctl["vpc"]["cidr"])
    zones = eksctl["availabilityZones"]
    # eksctl: the VPC CIDR split into /19s, public subnets first (one per zone), then the private ones.
    slices = list(vpc.subnets(new_prefix=19))
    assert blocks == set(slices[: len(zones)])
    private = slices[len(zones) : 2 * len(zones)]
    for pod in (HEAD, ROUTER, MODEL, OPERATOR, PROMETHEUS, STRANGER, NODE):
        address = ipaddress.ip_address(pod.ip)
        assert any(address in s for s in private) and not any(address in b for b in blocks)
    assert all(g.get("privateNetworking") for g in eksctl["managedNodeGroups"])


def test_egress_is_what_each_pod_needs_and_never_the_metadata_service(policies):
    for pod in (HEAD, ROUTER, MODEL, NEIGHBOUR):
        assert allowed(policies, pod, DNS, 53, "UDP")
        for port in (80, 443):
            assert not allowed(policies, pod, IMDS, port)
    assert allowed(policies, ROUTER, INTERNET, 443) and allowed(policies, MODEL, INTERNET, 443)
    assert not allowed(policies, HEAD, INTERNET, 443) and not allowed(policies, NEIGHBOUR, INTERNET, 443)
    assert not allowed(policies, ROUTER, INTERNET, 80)
    assert allowed(policies, ROUTER, LANGFUSE, 3000) and not allowed(policies, MODEL, LANGFUSE, 3000)
    for pod in (HEAD, ROUTER, MODEL):
        assert allowed(policies, pod, COLLECTOR, 4318)
    # Router pods reach no other pod in the VPC over 443 (the Anthropic rule is internet-only).
    assert not allowed(policies, ROUTER, STRANGER, 443)


def test_the_policy_evaluator_can_say_yes_and_no():
    open_all = [
        {
            "metadata": {"namespace": NS},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 1}]}]},
        }
    ]
    assert allowed(open_all, STRANGER, ROUTER, 1) and not allowed(open_all, STRANGER, ROUTER, 2)
    assert allowed([], STRANGER, ROUTER, 2)  # no policy: Kubernetes' default is open


def test_network_policies_are_applied_before_the_rayservice_and_removed_by_teardown():
    lines = _dry_run("rayservice").splitlines()
    netpol = next(i for i, line in enumerate(lines) if "networkpolicies.yaml" in line)
    rayservice = next(i for i, line in enumerate(lines) if "apply -f kuberay/rayservice.yaml" in line)
    assert netpol < rayservice
    teardown = subprocess.run(
        ["bash", str(REPO / "cluster" / "teardown.sh")],
        env={**os.environ, "DRY_RUN": "1", "KEEP_CLUSTER": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "kubectl delete -f kuberay/networkpolicies.yaml" in teardown


def test_eks_enforces_network_policies(eksctl):
    (cni,) = [a for a in eksctl["addons"] if a["name"] == "vpc-cni"]
    assert yaml.safe_load(cni["configurationValues"])["enableNetworkPolicy"] == "true"


# --- Secrets only where they are used -------------------------------------------------------------------------

ROUTER_SECRETS = {"anthropic-api-key", "router-api-keys"}


def test_router_secrets_are_only_in_the_cpu_group(rayservice):
    templates = _templates(rayservice)
    assert _secret_refs(templates["cpu"]["spec"]) == ROUTER_SECRETS
    assert _secret_refs(templates["head"]["spec"]) == set()
    assert _secret_refs(templates["gpu-l4"]["spec"]) == {"hf-token"}  # the model download, nothing else


def test_router_replicas_can_only_land_on_the_cpu_group(rayservice):
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    router = next(a for a in serve["applications"] if a["name"] == "router")
    options = router["args"]["deployment"]["ray_actor_options"]
    wanted = options["resources"]
    assert wanted, "the router must ask for a resource only its worker group offers"
    groups = {g["groupName"]: g for g in _cluster(rayservice)["workerGroupSpecs"]}
    offered_by = {name for name, g in groups.items() if set(wanted) <= set(g.get("resources") or {})}
    assert offered_by == {"cpu"}
    head_params = _cluster(rayservice)["headGroupSpec"]["rayStartParams"]
    assert head_params["num-cpus"] == "0" and "resources" not in head_params
    cpu = groups["cpu"]
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    # Enough of the resource on the largest cpu group for the router's largest replica count.
    per_pod = {k: float(v) for k, v in cpu["resources"].items()}
    max_replicas = router["args"]["deployment"]["autoscaling_config"]["max_replicas"]
    for key, amount in wanted.items():
        assert per_pod[key] * cpu["maxReplicas"] >= amount * max_replicas


# --- No instance metadata, no AWS permissions on the node role ------------------------------------------------


def test_pods_cannot_use_the_instance_metadata_service(eksctl):
    for group in eksctl["managedNodeGroups"]:
        assert group["disableIMDSv1"] is True and group["disablePodIMDS"] is True, group["name"]


def test_node_roles_carry_no_addon_policies_and_controllers_use_their_own_roles(eksctl):
    for group in eksctl["managedNodeGroups"]:
        iam = group.get("iam") or {}
        assert not iam.get("withAddonPolicies") and not iam.get("attachPolicyARNs"), group["name"]
    accounts = {(a["metadata"]["namespace"], a["metadata"]["name"]): a for a in eksctl["iam"]["serviceAccounts"]}
    assert accounts["kube-system", "cluster-autoscaler"]["wellKnownPolicies"] == {"autoScaler": True}
    lbc = accounts["kube-system", "aws-load-balancer-controller"]
    assert lbc["wellKnownPolicies"] == {"awsLoadBalancerController": True}
    (ebs,) = [a for a in eksctl["addons"] if a["name"] == "aws-ebs-csi-driver"]
    assert ebs["useDefaultPodIdentityAssociations"] is True


# --- Restricted pods, images by digest, bounded volumes -------------------------------------------------------

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_every_container_is_restricted_with_a_read_only_root(rayservice):
    for name, template in _templates(rayservice).items():
        spec = template["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for container in spec["containers"]:
            assert container["securityContext"] == RESTRICTED, name
            assert "privileged" not in container["securityContext"]
    assert _cluster(rayservice)["autoscalerOptions"]["securityContext"] == RESTRICTED


def test_restricted_is_enforced_on_the_namespace():
    namespaces = {d["metadata"]["name"]: d for d in load_yaml_docs(REPO / "cluster" / "namespaces.yaml")}
    labels = namespaces[NS]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_ray_gets_writable_bounded_scratch_space(rayservice):
    for name, template in _templates(rayservice).items():
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for volume in volumes.values():
            assert "hostPath" not in volume, name
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{name}: emptyDir {volume['name']} has no sizeLimit"
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        # Ray's session dir (logs included) and the rest of /tmp are writable emptyDirs under a read-only root.
        assert "emptyDir" in volumes[mounts["/tmp/ray"]] and "emptyDir" in volumes[mounts["/tmp"]], name
        # KubeRay mounts the head's volume named ray-logs into its autoscaler sidecar (ours, with the limit).
        assert mounts["/tmp/ray"] == "ray-logs", name
    gpu = _templates(rayservice)["gpu-l4"]["spec"]
    mounts = {m["mountPath"] for m in gpu["containers"][0]["volumeMounts"]}
    assert {"/home/ray/.cache", "/dev/shm"} <= mounts


def test_every_image_is_pinned_by_digest(rayservice):
    text = (REPO / "kuberay" / "rayservice.yaml").read_text()
    images = render.images(text)
    assert len(images) == len([c for t in _templates(rayservice).values() for c in t["spec"]["containers"]])
    for image in images:
        assert render.DIGEST_REF.match(image), image


def test_render_pins_every_image_and_refuses_a_tag():
    text = (REPO / "kuberay" / "rayservice.yaml").read_text()
    ref = "registry.example.com/hybrid-llm:0.2.0@sha256:" + "ab" * 32
    pinned = render.pin_image(text, ref)
    assert set(render.images(pinned)) == {ref}
    assert render.pin_image(pinned, render.images(text)[0]) == text
    for bad in ("registry.example.com/hybrid-llm:0.2.0", "hybrid-llm@sha256:abc", "hybrid-llm:latest"):
        with pytest.raises(ValueError, match="not pinned by digest"):
            render.pin_image(text, bad)


def test_deploy_refuses_the_placeholder_digest(tmp_path):
    assert re.search(r"@sha256:0{64}", (REPO / "kuberay" / "rayservice.yaml").read_text())
    # Only the shell utilities on PATH, no kubectl: the refusal must come before any command runs.
    for tool in ("dirname", "grep"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(
        ["/bin/bash", str(REPO / "cluster" / "deploy.sh"), "rayservice"],
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 1 and "placeholder image digest" in done.stderr, done.stderr


# --- The local platform: loopback only, auth mode explicit ----------------------------------------------------


def test_local_platform_binds_ray_to_loopback_and_says_what_auth_disabled_means():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^export RAY_AUTH_MODE \?= disabled$", makefile, re.M)
    (start,) = re.findall(r"ray start --head[^;]*", makefile.replace("\\\n", " "))
    assert "--node-ip-address=127.0.0.1" in start and "--dashboard-host=127.0.0.1" in start
    local = yaml.safe_load((REPO / "serve_config.local.yaml").read_text())
    assert local["http_options"]["host"] == "127.0.0.1"
    readme = (REPO / "README.md").read_text()
    assert "RAY_AUTH_MODE=disabled" in readme and "127.0.0.1" in readme
