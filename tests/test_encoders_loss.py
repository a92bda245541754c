"""CoCa losses: hand-computed single-process values, and the world-size-aware ClipLoss over a real
2-process torch.distributed (gloo) group matching the full-batch loss and its gradients."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from ecgbatch.encoders.loss import ClipLoss, CoCaLoss  # noqa: E402


def test_clip_loss_by_hand():
    e = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    t = F.normalize(torch.tensor([[1.0, 0.1], [0.0, 1.0]]), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * e @ t.T
    lab = torch.arange(2)
    manual = 0.0
    for m in (logits, logits.T):
        manual += -(m.log_softmax(-1)[lab, lab]).mean() / 2
    assert float(ClipLoss()(e, t, scale)) == pytest.approx(float(manual), rel=1e-6)


def test_coca_caption_loss_ignores_pad_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[3, 5, 0, 0], [1, 0, 0, 0]])
    e = F.normalize(torch.randn(2, 8), dim=-1)
    out = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)(e, e, logits, labels, torch.tensor(5.0),
                                                                    output_dict=True)
    lp = logits.log_softmax(-1)
    manual = -(lp[0, 0, 3] + lp[0, 1, 5] + lp[1, 0, 1]) / 3
    assert float(out["caption_loss"]) == pytest.approx(2.0 * float(manual), rel=1e-6)
    assert float(out["contrastive_loss"]) == pytest.approx(float(ClipLoss()(e, e, torch.tensor(5.0))), rel=1e-6)
    off = CoCaLoss(clip_loss_weight=0.0)(e, e, logits, labels, torch.tensor(5.0))
    assert float(off[0]) == 0.0


def test_rank_arguments_checked():
    with pytest.raises(ValueError, match="rank"):
        ClipLoss(rank=2, world_size=2)


WORKER = textwrap.dedent('''
    import os, sys, numpy as np, torch, torch.distributed as dist, torch.nn.functional as F
    from ecgbatch.encoders.loss import ClipLoss
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    full_e = torch.from_numpy(np.load(sys.argv[1])); full_t = torch.from_numpy(np.load(sys.argv[2]))
    b = full_e.shape[0] // world
    e = full_e[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    t = full_t[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    loss = ClipLoss(rank=rank, world_size=world)(e, t, torch.tensor(14.0))
    loss.backward()
    np.save(sys.argv[3] + f"_{rank}.npy", np.concatenate([[loss.item()], e.grad.numpy().ravel(),
                                                             t.grad.numpy().ravel()]))
    dist.destroy_process_group()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_gather_matches_full_batch(tmp_path):
    rng = np.random.default_rng(0)
    E = rng.standard_normal((6, 5)).astype(np.float32)
    T = rng.standard_normal((6, 5)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    np.save(tmp_path / "e.npy", E)
    np.save(tmp_path / "t.npy", T)
    (tmp_path / "worker.py").write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "e.npy"),
                                       str(tmp_path / "t.npy"), str(tmp_path / "out")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out

    # single process on the full batch
    e = torch.from_numpy(E).requires_grad_(True)
    t = torch.from_numpy(T).requires_grad_(True)
    loss = ClipLoss()(e, t, torch.tensor(14.0))
    loss.backward()
    for rank in range(2):
        r = np.load(tmp_path / f"out_{rank}.npy")
        assert r[0] == pytest.approx(loss.item(), rel=1e-6)   # every rank sees the global loss
        ge, gt = r[1:16].reshape(3, 5), r[16:].reshape(3, 5)
        # gradients reach the local shard exactly as in the full-batch loss
        np.testing.assert_allclose(ge, e.grad.numpy()[rank * 3:(rank + 1) * 3], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(gt, t.grad.numpy()[rank * 3:(rank + 1) * 3], rtol=1e-5, atol=1e-7)
