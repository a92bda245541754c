"""The GPU index choices, decided and checked on CPU: IVF-PQ sizes the GPU kernels run, a GPU
sharded wrapper recognised through faiss's classes (the GPU runs themselves: test_index_search's
``gpu`` tests, on a machine with a GPU)."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from ecgbatch.index import ModelSignature, build_index
from ecgbatch.index.builder import default_params
from ecgbatch.index.errors import GpuIndexSettingsError
from ecgbatch.index.faiss_index import (
    GPU_PQ_M, GPU_PQ_SUB_DIMS, check_gpu_pq, choose_pq_m, gpu_pq_sizes, new_index, on_gpu, to_cpu, to_gpu,
)


@pytest.mark.parametrize("d, cpu_m, gpu_m", [(512, 128, 64), (256, 64, 64), (768, 192, 96), (128, 32, 32),
                                             (384, 96, 96), (1024, 256, 64)])
def test_gpu_pq_m_is_one_the_gpu_runs(d, cpu_m, gpu_m):
    assert choose_pq_m(d) == cpu_m                     # CPU builds keep their measured choice
    m = choose_pq_m(d, gpu=True)
    assert m == gpu_m
    assert m in GPU_PQ_M and d % m == 0 and d // m in GPU_PQ_SUB_DIMS
    check_gpu_pq(d, m)


def test_no_gpu_pq_for_some_dimensions_is_a_clear_error():
    assert gpu_pq_sizes(352) == []                      # 352 = 11 * 32: no m with a supported d/m
    with pytest.raises(GpuIndexSettingsError, match="without --gpu"):
        choose_pq_m(352, gpu=True)
    with pytest.raises(GpuIndexSettingsError, match="pq_m=128 .* use one of \\[16, 32, 64\\]"):
        check_gpu_pq(512, 128)


def test_default_params_gpu_refuses_a_given_pq_m_before_training():
    assert default_params("ivfpq", 200_000, 512).pq_m == 128
    assert default_params("ivfpq", 200_000, 512, gpu=True).pq_m == 64
    with pytest.raises(GpuIndexSettingsError):
        default_params("ivfpq", 200_000, 512, pq_m=128, gpu=True)


def test_to_gpu_refuses_an_ivfpq_the_gpu_cannot_run_before_looking_for_a_gpu():
    with pytest.raises(GpuIndexSettingsError, match="pq_m=128"):
        to_gpu(new_index("ivfpq", 512, nlist=4, pq_m=128))


def test_to_cpu_and_on_gpu_with_cpu_indexes():
    flat = faiss.IndexFlatIP(8)
    assert not on_gpu(flat) and to_cpu(flat) is flat
    shards = faiss.IndexShards(8)                       # the wrapper several GPUs come back in
    shards.add_shard(faiss.IndexFlatIP(8))
    replicas = faiss.IndexReplicas(8)
    replicas.addIndex(faiss.IndexFlatIP(8))
    for wrapper in (shards, replicas):
        assert not on_gpu(wrapper) and to_cpu(wrapper) is wrapper


def test_cpu_ivfpq_build_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 512)).astype(np.float32)
    idx = build_index(x, [str(i) for i in range(len(x))], kind="ivfpq", model=ModelSignature("m", "w", 512), nlist=16)
    assert idx.params.pq_m == 128 and idx.index.is_trained and idx.index.ntotal == len(x)
