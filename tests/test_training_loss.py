"""The contrastive loss over features gathered from 2 real gloo workers equals the
single-process loss on the same global batch, and each worker's gradient is the single-process
gradient of its own shard (ECG-Chat's ClipLoss semantics, as the training job uses them)."""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from ecgbatch.encoders.loss import ClipLoss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    ecg_all = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    txt_all = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    per = 8 // world
    ecg = ecg_all[rank * per:(rank + 1) * per].clone().requires_grad_(True)
    txt = txt_all[rank * per:(rank + 1) * per].clone().requires_grad_(True)
    loss = ClipLoss(rank=rank, world_size=world)(ecg, txt, torch.tensor(14.0))
    loss.backward()
    np.savez(os.path.join(out_dir, f"r{rank}.npz"), loss=loss.detach().numpy(), ge=ecg.grad.numpy(),
             gt=txt.grad.numpy())
    dist.destroy_process_group()


def test_gathered_loss_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    from ecgbatch.encoders.loss import ClipLoss

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g = torch.Generator().manual_seed(0)
    ecg = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1).requires_grad_(True)
    txt = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1).requires_grad_(True)
    loss = ClipLoss()(ecg, txt, torch.tensor(14.0))
    loss.backward()
    ref = float(loss.detach())
    for r in range(2):
        z = np.load(tmp_path / f"r{r}.npz")
        assert abs(float(z["loss"]) - ref) < 1e-6          # same loss on every rank
        np.testing.assert_allclose(z["ge"], ecg.grad[r * 4:(r + 1) * 4].numpy(), atol=1e-6)
        np.testing.assert_allclose(z["gt"], txt.grad[r * 4:(r + 1) * 4].numpy(), atol=1e-6)
    assert ref > 0.1  # not a degenerate batch
