"""What a quiet ecgbatch run must not print (ecgbatch.quiet), shared by the tests that run a
generative command in its own process."""
from __future__ import annotations

import os

# What vLLM and torch print on every start that an ecgbatch user cannot act on (ecgbatch.quiet),
# and what its exit printed before the engine was shut down explicitly
NOISE = ("Triton", "is not found in LD_PRELOAD", "different tokenizers for different LoRAs", "reduce_op", "NUMA binding",
         "Loading safetensors checkpoint shards", "Enforce eager set", "Reset SSM cache type")
UNCLEAN_EXIT = ("exited unexpectedly", "force killing", "still running after")


def assert_quiet(stderr: str) -> None:
    """Without --verbose: none of the noise, a clean exit, and the one thing that matters said once."""
    assert not [n for n in NOISE + UNCLEAN_EXIT if n in stderr], stderr[-3000:]
    if "libtcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        assert stderr.count("vLLM CPU backend: no libtcmalloc") == 1, stderr[-3000:]
