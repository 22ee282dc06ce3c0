#!/usr/bin/env bash
# Stand up hybrid-llm on EKS, idempotently: every step can be re-run and only converges.
#
#   cluster/deploy.sh                  all steps, in order
#   cluster/deploy.sh <step>...        some steps: cluster secrets alerting observability operator rayservice ingress
#   DRY_RUN=1 cluster/deploy.sh        print the commands instead of running them
#
# Order: the charts read existing Secrets (Grafana admin, Langfuse, Alertmanager's configuration), so Secrets
# come before the charts; the KubeRay operator's ServiceMonitor needs kube-prometheus-stack's CRDs, so it comes
# after them; the Ingress points at the Service the RayService creates.
# Needs: aws, eksctl, kubectl, helm (v3.8+ or v4), openssl. From the environment: ANTHROPIC_API_KEY (and
# optionally ROUTER_API_KEYS) for `secrets`; ALERT_SLACK_WEBHOOK_URL or ALERTMANAGER_CONFIG (a file) for
# `alerting`; ACM_CERTIFICATE_ARN for `ingress`. CLUSTER_NAME and AWS_REGION must match cluster/eksctl-cluster.yaml.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME="${CLUSTER_NAME:-hybrid-llm}"
AWS_REGION="${AWS_REGION:-us-east-1}"
APP_NS=hybrid-llm
MON_NS=monitoring
LANGFUSE_NS=langfuse
KUBERAY_NS=kuberay-system

# Chart versions (the values files are checked against these charts' defaults in tests/deploy).
KPS_VERSION=88.5.3
DCGM_VERSION=4.8.2
TEMPO_VERSION=2.2.4
OTEL_VERSION=0.170.0
LANGFUSE_VERSION=2.0.0
KUBERAY_VERSION=1.7.0
LBC_VERSION=3.5.0
CERT_MANAGER_VERSION=v1.20.2
CLICKHOUSE_OPERATOR_VERSION=0.0.5
CLUSTER_AUTOSCALER_VERSION=9.59.0  # Cluster Autoscaler 1.35, the cluster's minor version

dry() { [[ "${DRY_RUN:-0}" == 1 ]]; }

# Run a command, or print it (paths relative to the repository) under DRY_RUN=1.
run() {
  if dry; then
    local line="$*"
    printf '+ %s\n' "${line//$ROOT\//}"
  else
    "$@"
  fi
}

# Create a generic Secret from KEY=VALUE lines on stdin, only when it is missing, so generated passwords
# survive re-runs. Values go through stdin, never the command line (no `ps` or shell-history leaks).
ensure_secret() {
  local ns="$1" name="$2"
  if dry; then
    printf '+ kubectl create secret generic %s -n %s --from-env-file=/dev/stdin  # keys: %s\n' \
      "$name" "$ns" "$(cut -d= -f1 | paste -sd, -)"
    return
  fi
  if kubectl get secret "$name" -n "$ns" >/dev/null 2>&1; then
    cat >/dev/null
    echo "secret $ns/$name exists"
    return
  fi
  kubectl create secret generic "$name" -n "$ns" --from-env-file=/dev/stdin
}

random() { if dry; then echo "<random>"; else openssl rand -hex "${1:-24}"; fi; }

step_cluster() {
  if dry || ! eksctl get cluster --name "$CLUSTER_NAME" --region "$AWS_REGION" >/dev/null 2>&1; then
    run eksctl create cluster -f "$ROOT/cluster/eksctl-cluster.yaml"
  fi
  run aws eks update-kubeconfig --name "$CLUSTER_NAME" --region "$AWS_REGION"
  run kubectl apply -f "$ROOT/cluster/storageclass-gp3.yaml"
  run kubectl apply -f "$ROOT/cluster/namespaces.yaml"
  run helm repo add --force-update autoscaler https://kubernetes.github.io/autoscaler
  run helm upgrade --install cluster-autoscaler autoscaler/cluster-autoscaler --version "$CLUSTER_AUTOSCALER_VERSION" \
    -n kube-system \
    --set autoDiscovery.clusterName="$CLUSTER_NAME" --set awsRegion="$AWS_REGION" \
    --set rbac.serviceAccount.create=false --set rbac.serviceAccount.name=cluster-autoscaler --wait
}

step_secrets() {
  run kubectl apply -f "$ROOT/cluster/namespaces.yaml"
  # Grafana's admin login (kube-prometheus-stack reads it through grafana.admin.existingSecret).
  ensure_secret "$MON_NS" grafana-admin <<<"admin-user=admin
admin-password=$(random 16)"
  # Langfuse: app secrets and data-store passwords, generated once. The init keys create the organisation,
  # project and API keys headlessly; the router and the Collector use the same key pair.
  local pk="pk-lf-$(random 16)" sk="sk-lf-$(random 16)"
  if ! dry && kubectl get secret langfuse -n "$LANGFUSE_NS" >/dev/null 2>&1; then
    pk="$(kubectl get secret langfuse -n "$LANGFUSE_NS" -o jsonpath='{.data.init-public-key}' | base64 -d)"
    sk="$(kubectl get secret langfuse -n "$LANGFUSE_NS" -o jsonpath='{.data.init-secret-key}' | base64 -d)"
  fi
  local pg redis
  pg="$(random)"
  redis="$(random)"
  ensure_secret "$LANGFUSE_NS" langfuse <<<"salt=$(random)
encryption-key=$(random 32)
nextauth-secret=$(random)
postgresql-password=$pg
postgres-password=$(random)
POSTGRES_USER=postgres
POSTGRES_PASSWORD=$(random)
USERDB_USER=langfuse
USERDB_PASSWORD=$pg
POSTGRES_DB=langfuse
clickhouse-password=$(random)
redis-password=$redis
default=$redis
init-public-key=$pk
init-secret-key=$sk
init-user-password=$(random 16)"
  # Langfuse's key pair as Basic auth for the Collector, which sends Langfuse the router's generations.
  ensure_secret "$MON_NS" otel-langfuse-auth <<<"authorization=Basic $(printf '%s:%s' "$pk" "$sk" | base64 | tr -d '\n')"
  # Ray's cluster token (KubeRay authOptions.secretName): every Ray API call, the dashboard and `serve deploy`.
  ensure_secret "$APP_NS" ray-auth-token <<<"auth_token=$(random 32)"
  # Bearer keys clients present to the router (mounted at /etc/hybrid-llm/api-keys/keys).
  ensure_secret "$APP_NS" router-api-keys <<<"keys=${ROUTER_API_KEYS:-hl-$(random 24)}"
  # The Anthropic key is the one Secret replaced on every run, from the environment.
  if dry; then
    echo '+ kubectl apply -f - # Secret hybrid-llm/anthropic-api-key, key api-key = $ANTHROPIC_API_KEY'
  elif [[ -n "${ANTHROPIC_API_KEY:-}" ]]; then
    printf 'api-key=%s\n' "$ANTHROPIC_API_KEY" |
      kubectl create secret generic anthropic-api-key -n "$APP_NS" --from-env-file=/dev/stdin \
        --dry-run=client -o yaml | kubectl apply -f -
  elif ! kubectl get secret anthropic-api-key -n "$APP_NS" >/dev/null 2>&1; then
    echo "ANTHROPIC_API_KEY is not set and secret $APP_NS/anthropic-api-key does not exist" >&2
    exit 1
  fi
}

# Alertmanager reads its whole configuration from Secret monitoring/alertmanager-hybrid-llm (kube-prometheus-stack's
# useExistingSecret + configSecret); receiver credentials live in monitoring/alertmanager-receivers, mounted at
# /etc/alertmanager/secrets/alertmanager-receivers/. Alerts that reach no receiver are not alerts: without a
# receiver given now or configured before, this step refuses.
step_alerting() {
  local config
  if [[ -n "${ALERTMANAGER_CONFIG:-}" ]]; then
    config="$ALERTMANAGER_CONFIG"
    [[ -r "$config" ]] || { echo "ALERTMANAGER_CONFIG=$config is not a readable file" >&2; exit 1; }
  elif [[ -n "${ALERT_SLACK_WEBHOOK_URL:-}" ]]; then
    config="$ROOT/observability/alertmanager/alertmanager.yaml"
  elif ! dry && kubectl get secret alertmanager-hybrid-llm -n "$MON_NS" >/dev/null 2>&1; then
    echo "secret $MON_NS/alertmanager-hybrid-llm exists; keeping its receivers"
    return
  else
    echo "no alert receiver: set ALERT_SLACK_WEBHOOK_URL (Slack incoming webhook) or ALERTMANAGER_CONFIG" \
      "(an Alertmanager configuration file with your receivers); see docs/deploy.md" >&2
    exit 1
  fi
  if dry; then
    echo "+ kubectl apply -f - # Secret $MON_NS/alertmanager-hybrid-llm, key alertmanager.yaml = ${config//$ROOT\//}"
  else
    kubectl create secret generic alertmanager-hybrid-llm -n "$MON_NS" --from-file=alertmanager.yaml="$config" \
      --dry-run=client -o yaml | kubectl apply -f -
  fi
  if [[ -n "${ALERT_SLACK_WEBHOOK_URL:-}" ]]; then
    if dry; then
      echo "+ kubectl apply -f - # Secret $MON_NS/alertmanager-receivers, key slack-webhook-url = \$ALERT_SLACK_WEBHOOK_URL"
    else
      printf 'slack-webhook-url=%s\n' "$ALERT_SLACK_WEBHOOK_URL" |
        kubectl create secret generic alertmanager-receivers -n "$MON_NS" --from-env-file=/dev/stdin \
          --dry-run=client -o yaml | kubectl apply -f -
    fi
  else
    # Mounted into Alertmanager's pod, so it must exist even when a configuration file carries its own receivers.
    ensure_secret "$MON_NS" alertmanager-receivers <<<"slack-webhook-url="
  fi
}

step_observability() {
  local v="$ROOT/observability/values"
  run helm repo add --force-update prometheus-community https://prometheus-community.github.io/helm-charts
  run helm repo add --force-update gpu-helm-charts https://nvidia.github.io/dcgm-exporter/helm-charts
  run helm repo add --force-update grafana-community https://grafana-community.github.io/helm-charts
  run helm repo add --force-update open-telemetry https://open-telemetry.github.io/opentelemetry-helm-charts
  run helm repo add --force-update langfuse https://langfuse.github.io/langfuse-k8s
  run helm repo update
  run helm upgrade --install prometheus prometheus-community/kube-prometheus-stack --version "$KPS_VERSION" \
    -n "$MON_NS" -f "$v/kube-prometheus-stack.yaml" --wait --timeout 15m
  run helm upgrade --install dcgm-exporter gpu-helm-charts/dcgm-exporter --version "$DCGM_VERSION" \
    -n "$MON_NS" -f "$v/dcgm-exporter.yaml"
  run helm upgrade --install tempo grafana-community/tempo --version "$TEMPO_VERSION" \
    -n "$MON_NS" -f "$v/tempo.yaml" --wait
  # The Collector sends Tempo every span and Langfuse the router's request spans (its generations).
  run helm upgrade --install otel-collector open-telemetry/opentelemetry-collector --version "$OTEL_VERSION" \
    -n "$MON_NS" -f "$v/opentelemetry-collector.yaml" --wait
  # Langfuse 2.x renders ClickHouseCluster/KeeperCluster CRs: cert-manager and the ClickHouse operator first.
  run helm upgrade --install cert-manager oci://quay.io/jetstack/charts/cert-manager \
    --version "$CERT_MANAGER_VERSION" -n cert-manager --create-namespace --set crds.enabled=true --wait
  run helm upgrade --install clickhouse-operator oci://ghcr.io/clickhouse/clickhouse-operator-helm \
    --version "$CLICKHOUSE_OPERATOR_VERSION" -n clickhouse-operator --create-namespace --wait
  run helm upgrade --install langfuse langfuse/langfuse --version "$LANGFUSE_VERSION" \
    -n "$LANGFUSE_NS" -f "$v/langfuse.yaml" --wait --timeout 20m
  # Dashboards (ConfigMaps with the Grafana sidecar label) and the PrometheusRule.
  run kubectl apply -k "$ROOT/observability"
}

step_operator() {
  run helm repo add --force-update kuberay https://ray-project.github.io/kuberay-helm/
  run helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
    -n "$KUBERAY_NS" --create-namespace -f "$ROOT/kuberay/operator-values.yaml" --wait
}

step_rayservice() {
  # Images by digest only, and never the placeholder committed before a build exists.
  if ! dry && grep -Eq '@sha256:0{64}' "$ROOT/kuberay/rayservice.yaml"; then
    echo "kuberay/rayservice.yaml still names the placeholder image digest: build and push kuberay/Dockerfile," \
      "then pin it with: python -m kuberay.render --image <repository>:<tag>@sha256:<digest>" >&2
    exit 1
  fi
  # Default deny for the namespace before any Ray pod exists.
  run kubectl apply -f "$ROOT/kuberay/networkpolicies.yaml"
  run kubectl apply -f "$ROOT/kuberay/podmonitors.yaml"
  run kubectl apply -f "$ROOT/kuberay/rayservice.yaml"
  run kubectl wait -n "$APP_NS" rayservice/hybrid-llm --for=condition=Ready --timeout=45m
}

# The public entry point: the AWS Load Balancer Controller (IAM role from eksctl) and the ALB Ingress with the
# operator's ACM certificate, which must be in the cluster's region.
step_ingress() {
  local arn="${ACM_CERTIFICATE_ARN:-}"
  if [[ ! "$arn" =~ ^arn:aws[a-z-]*:acm:([a-z0-9-]+):[0-9]{12}:certificate/[0-9a-f-]+$ ]]; then
    echo "ACM_CERTIFICATE_ARN must name an ACM certificate (arn:aws:acm:<region>:<account>:certificate/<id>)" \
      "for the ALB's HTTPS listener; got '${arn}'" >&2
    exit 1
  fi
  if [[ "${BASH_REMATCH[1]}" != "$AWS_REGION" ]]; then
    echo "ACM_CERTIFICATE_ARN is in ${BASH_REMATCH[1]}; an ALB in $AWS_REGION needs a certificate from $AWS_REGION" >&2
    exit 1
  fi
  local vpc="<vpc-id>"
  dry || vpc="$(aws eks describe-cluster --name "$CLUSTER_NAME" --region "$AWS_REGION" \
    --query cluster.resourcesVpcConfig.vpcId --output text)"
  run helm repo add --force-update eks https://aws.github.io/eks-charts
  run helm upgrade --install aws-load-balancer-controller eks/aws-load-balancer-controller --version "$LBC_VERSION" \
    -n kube-system -f "$ROOT/cluster/aws-load-balancer-controller.yaml" \
    --set clusterName="$CLUSTER_NAME" --set region="$AWS_REGION" --set vpcId="$vpc" --wait
  if dry; then
    echo '+ kubectl apply -f - # kuberay/ingress.yaml with ${ACM_CERTIFICATE_ARN} = $ACM_CERTIFICATE_ARN'
  else
    sed "s|\${ACM_CERTIFICATE_ARN}|$arn|" "$ROOT/kuberay/ingress.yaml" | kubectl apply -f -
  fi
  run kubectl wait -n "$APP_NS" ingress/hybrid-llm --for=jsonpath='{.status.loadBalancer.ingress}' --timeout=10m
}

STEPS=(cluster secrets alerting observability operator rayservice ingress)

main() {
  local steps=("$@")
  [[ ${#steps[@]} -gt 0 ]] || steps=("${STEPS[@]}")
  for s in "${steps[@]}"; do
    if [[ " ${STEPS[*]} " == *" $s "* ]]; then
      echo "== $s"
      "step_$s"
    else
      echo "unknown step: $s (${STEPS[*]})" >&2
      exit 2
    fi
  done
}

main "$@"
