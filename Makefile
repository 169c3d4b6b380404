# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo lint browser test gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,hf,wds,openvino]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/gtcompress distill --recipe recipes/digits.yaml --teacher resnet50 --student mobilenetv3_small

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The headless browser the report test renders with: installed once where apt-get can (root), else that test skips.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo "installing chromium (once) for the browser test" \
	       && DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
	  || echo "chromium could not be installed: the browser test will skip"

# One torch thread per pytest-xdist worker (two torch processes on 2 cores each with 2 threads slow each other ~20x);
# a test file stays on one worker, so its module fixtures are built once. The slow end-to-end checks run under
# CI=true (as CI runs this target), or with `make test CI=true`.
# A crashed worker fails the run rather than being replaced, and the whole run is bounded (each test is, at 10 min).
test: lint browser
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 timeout --kill-after=60 2400 $(BIN)/python -m pytest -q -n auto --dist loadfile \
	  --max-worker-restart 0 $(if $(CI),,-m "not slow")

gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) runs build *.egg-info
