# hybrid-llm: the two commands a user needs are `make serve` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STATE := .cache
PORT ?= 8000
METRICS_PORT ?= 8080
DASHBOARD_PORT ?= 8265

# Keep Ray on loopback, quiet and reproducible (see DESIGN.md, environment facts).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE ?= disabled
export VLLM_HOST_IP := 127.0.0.1
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_NO_USAGE_STATS := 1
export HF_HUB_OFFLINE ?= 1
# Models the platform builds (the default SmolLM2 checkpoint, the smoke model) live in the state directory.
export HYBRID_LLM_CACHE_DIR ?= $(CURDIR)/$(STATE)
# Ray Serve's HAProxy ingress: about 3x lower added latency and 2.6x the throughput of the default proxy
# actor (docs/benchmarks.md). Set to 0 to use the default proxy.
export RAY_SERVE_ENABLE_HA_PROXY ?= 1
# Serve's HTTP proxy reads X-Request-Id before the router does: this middleware replaces an invalid one first
# (docs/hardening.md).
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH ?= serve_app.ingress:serve_http_middlewares

.PHONY: install system-deps serve stop status test lint test-fast fuzz soak bench simulate rayservice check-rayservice deploy teardown verify clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,dev,sim]'
	# PyPI's torchvision/torchaudio/torchcodec are CUDA-side builds that break `import transformers`
	# beside torch+cpu; text models need none of them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $@

install: $(VENV)/.installed

# Prometheus, promtool and amtool (Debian packages) for the deploy and integration tests.
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v amtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; \
	  else echo "install the Debian packages 'prometheus' and 'prometheus-alertmanager' (promtool, amtool), e.g. sudo apt-get install prometheus prometheus-alertmanager"; exit 1; fi; }

# Start a local Ray cluster on loopback and deploy the local CPU profile (serve_config.local.yaml).
serve: install
	@mkdir -p $(STATE)
	@[ -s $(STATE)/dev-api-key ] || $(PY) -c "import secrets; print('sk-local-' + secrets.token_urlsafe(24))" > $(STATE)/dev-api-key
	@chmod 600 $(STATE)/dev-api-key
	@# The default local model (LOCAL_MODEL unset): SmolLM2-135M-Instruct, downloaded and converted once.
	@[ -n "$${LOCAL_MODEL:-}" ] || $(PY) -m serve_app.default_model
	@# Offline mode: without ANTHROPIC_API_KEY the cloud is the project's Anthropic stand-in (docs/simulate.md).
	@eval "$$($(PY) -m serve_app.sim.offline env --state $(STATE))"; \
	if $(BIN)/ray status >/dev/null 2>&1; then \
	  echo "Ray is already running: replicas keep the environment it started with; run 'make stop' first for a" \
	    "changed LOCAL_MODEL, ANTHROPIC_API_KEY or HYBRID_LLM_API_KEYS to take effect."; \
	else HYBRID_LLM_API_KEYS="$${HYBRID_LLM_API_KEYS:-$$(cat $(STATE)/dev-api-key)}" \
	  $(BIN)/ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
	  --dashboard-port=$(DASHBOARD_PORT) --metrics-export-port=$(METRICS_PORT) --num-cpus=8 --disable-usage-stats >/dev/null; \
	fi
	$(BIN)/serve deploy serve_config.local.yaml
	@$(PY) -m serve_app.devserver wait --port $(PORT) --key-file $(STATE)/dev-api-key \
	  --dashboard-port $(DASHBOARD_PORT) --metrics-port $(METRICS_PORT)

status:
	$(BIN)/serve status

stop:
	-$(BIN)/serve shutdown -y
	-$(BIN)/ray stop
	-@$(PY) -m serve_app.sim.offline stop --state $(STATE)

# Traffic simulation against `make serve`: the mixed workload for 60 s, a report in reports/<run id>/.
# Options go in SIM_ARGS, e.g. make simulate SIM_ARGS="--workload short_chat --rate 5 --fault kill_model@20s".
SIM_ARGS ?=
simulate: install
	$(PY) -m serve_app.sim --base-url http://127.0.0.1:$(PORT) --metrics-url http://127.0.0.1:$(METRICS_PORT)/metrics \
	  --dashboard-url http://127.0.0.1:$(DASHBOARD_PORT) $(SIM_ARGS)

lint: install
	$(BIN)/ruff check serve_app tests bench cluster kuberay observability
	$(BIN)/ruff format --check serve_app tests bench cluster kuberay observability
	$(BIN)/lint-imports

# Unit, component and deploy tests only (no Ray cluster, seconds).
test-fast: install
	$(PY) -m pytest -q tests/unit tests/component tests/deploy

# Everything CI runs: lint, then every test tier including real Ray Serve + vLLM on CPU.
test: install system-deps lint
	$(PY) -m pytest -q -ra --durations=15

# Bad input at scale against the app in-process: 1,000 examples per strategy and route (>10,000 requests, a few
# minutes); figures in .cache/fuzz-report.json (docs/hardening.md quotes them). `make test` runs a small subset.
fuzz: install
	@mkdir -p $(STATE)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} FUZZ_REPORT=$(STATE)/fuzz-report.json \
	  $(PY) -m pytest -q tests/component/test_fuzz_ingress.py
	@cat $(STATE)/fuzz-report.json

# Soak: ten minutes of the simulator's mixed workload through the router after a four-minute warm-up (SOAK_MINUTES in all,
# default 14; SOAK_WARMUP, default 4), on a Ray cluster of its own;
# router replica RSS, descriptors, asyncio tasks and throughput over time (bench/results/soak.json, docs/hardening.md).
soak: install
	$(PY) -m bench.soak --minutes $${SOAK_MINUTES:-14} --warmup $${SOAK_WARMUP:-4}

# The router next to its floor (a bare forwarder on the same Serve ingress), LiteLLM's proxy and the stand-in, in
# one run; the tables go into docs/benchmarks.md. BENCH_PHASES=cloud (about 8 minutes) | cloud,model (default,
# about 25) | all; BENCH_ARGS="--quick --no-docs" for a first look.
BENCH_PHASES ?= cloud,model
BENCH_ARGS ?=
bench: install
	BENCH_PHASES=$(BENCH_PHASES) $(PY) -m bench.run_all $(BENCH_ARGS)

# serveConfigV2 in kuberay/rayservice.yaml is generated from serve_config.yaml.
rayservice: install
	$(PY) -m kuberay.render

check-rayservice: install
	$(PY) -m kuberay.render --check

# EKS: see docs/deploy.md.
deploy:
	cluster/deploy.sh

teardown:
	cluster/teardown.sh

verify: install
	$(PY) -m cluster.verify

clean: stop
	rm -rf $(VENV) $(STATE)
