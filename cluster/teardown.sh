#!/usr/bin/env bash
# Remove hybrid-llm from EKS, in the reverse order of deploy.sh, including what the charts leave behind.
#
#   cluster/teardown.sh                 everything, then the EKS cluster itself
#   KEEP_CLUSTER=1 cluster/teardown.sh  everything but the EKS cluster
#   DRY_RUN=1 cluster/teardown.sh       print the commands instead of running them
#
# StatefulSet PVCs (Prometheus, Alertmanager, Tempo, Langfuse's Postgres/ClickHouse/Keeper/Valkey/SeaweedFS)
# outlive `helm uninstall`, and so do Langfuse's generated Secrets (helm.sh/resource-policy: keep). Their
# EBS volumes are deleted only while the cluster and its CSI driver still exist, so PVCs go before the cluster.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME="${CLUSTER_NAME:-hybrid-llm}"
AWS_REGION="${AWS_REGION:-us-east-1}"

dry() { [[ "${DRY_RUN:-0}" == 1 ]]; }

run() {
  if dry; then
    local line="$*"
    printf '+ %s\n' "${line//$ROOT\//}"
  else
    "$@"
  fi
}

# Helm uninstall that succeeds when the release is already gone (re-runs converge).
uninstall() { run helm uninstall "$1" -n "$2" --ignore-not-found --wait; }

# The Ingress first, while its controller runs: the controller deletes the ALB, then releases the Ingress.
run kubectl delete -f "$ROOT/kuberay/ingress.yaml" --ignore-not-found --wait=true
uninstall aws-load-balancer-controller kube-system
run kubectl delete -f "$ROOT/kuberay/rayservice.yaml" --ignore-not-found --wait=true
run kubectl delete -f "$ROOT/kuberay/podmonitors.yaml" --ignore-not-found
run kubectl delete -f "$ROOT/kuberay/networkpolicies.yaml" --ignore-not-found
uninstall kuberay-operator kuberay-system
run kubectl delete -k "$ROOT/observability" --ignore-not-found
uninstall langfuse langfuse
uninstall clickhouse-operator clickhouse-operator
uninstall cert-manager cert-manager
uninstall otel-collector monitoring
uninstall tempo monitoring
uninstall dcgm-exporter monitoring
uninstall prometheus monitoring
uninstall cluster-autoscaler kube-system
for ns in langfuse monitoring hybrid-llm; do
  run kubectl delete pvc --all -n "$ns" --ignore-not-found --wait=true
  run kubectl delete secret --all -n "$ns" --ignore-not-found
done
run kubectl delete -f "$ROOT/cluster/namespaces.yaml" --ignore-not-found --wait=true
run kubectl delete namespace kuberay-system cert-manager clickhouse-operator --ignore-not-found
if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
  run eksctl delete cluster -f "$ROOT/cluster/eksctl-cluster.yaml" --disable-nodegroup-eviction --wait
fi
