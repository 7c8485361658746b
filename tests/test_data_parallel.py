"""Data parallel training on each framework's own engine equals its one-process equivalent, in
float64 (NUMERICS.md, "Training": float32 train steps are too chaotic to prove anything):

- torch ``DistributedDataParallel`` (gloo, 2 processes) = two half-batch gradients averaged,
  each half with its own BatchNorm batch statistics; rank 0's running statistics broadcast to
  every rank before each forward (DDP's ``broadcast_buffers``).
- ``paddle.DataParallel`` (gloo, ``paddle.distributed.spawn``) = the same, the running
  statistics staying each rank's own.
- jax, the batch sharded over 2 CPU devices under ``nnx.jit`` = the unsharded step: BatchNorm
  over the global batch.

The runs happen in tests/_dp_worker.py, in a fresh process group (killed whole on a timeout),
on 127.0.0.1 only; the one-process equivalents are computed here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import _dp_worker as W

WORKER = Path(__file__).resolve().parent / "_dp_worker.py"
TIMEOUT = 300  # seconds per run; a run takes ~5-15 s alone on 2 cores

# float64: the same arithmetic in another order (gloo's all-reduce sums then divides, the ranks
# use other thread counts) differs by ~1e-15 relative; 1e-10 leaves room for that, while each
# wrong variant checked below (one rank's half, the full batch) differs by more than 1e-3.
RTOL = 1e-10


def _launch(backend: str, out: Path, env: dict | None = None) -> None:
    """Run the worker for ``backend`` in its own session; on timeout kill that whole group
    (the ranks it spawned included) and fail."""
    process = subprocess.Popen([sys.executable, str(WORKER), backend, str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, **(env or {})})
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{backend} data-parallel run exceeded {TIMEOUT} s:\n{output[-3000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, f"{backend} data-parallel run failed:\n{output[-3000:]}"


def _rel(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-300))


def _assert_same(actual: dict, expected: dict, where: str) -> None:
    """Same keys; every tensor within RTOL of its largest value (failure names the tensor)."""
    assert sorted(actual) == sorted(expected), f"{where}: keys differ: {sorted(set(actual) ^ set(expected))[:10]}"
    worst = max(expected, key=lambda k: _rel(actual[k], expected[k]))
    assert _rel(actual[worst], expected[worst]) <= RTOL, \
        f"{where}: {worst} differs by {_rel(actual[worst], expected[worst]):.3g} relative"


def _ranks(out: Path) -> list[dict]:
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(W.WORLD)]


# --------------------------------------------------------------------------- one-process equivalents


def _torch_equivalent() -> tuple[list[dict], dict]:
    """Two replicas in this process, each stepping on its half with the averaged gradient.
    Returns per-rank records as the worker writes them, and {name: first-step gradients} of
    what data parallelism must not compute (one half alone; the full batch)."""
    import torch
    from torch.nn import functional as F

    replicas = [W.build("torch") for _ in range(W.WORLD)]
    full = W.build("torch")
    optimizers = [torch.optim.SGD(m.parameters(), lr=W.LR, momentum=W.MOMENTUM) for m in replicas]
    records, wrong = [{} for _ in replicas], {}
    for step, (x, y) in enumerate(W.batches()):
        for m in replicas[1:]:  # DDP's broadcast_buffers=True
            for mine, rank0 in zip(m.buffers(), replicas[0].buffers(), strict=True):
                mine.copy_(rank0)
        for rank, (m, record) in enumerate(zip(replicas, records, strict=True)):
            m.zero_grad()
            loss = F.cross_entropy(m(torch.from_numpy(W.shard(x, rank))), torch.from_numpy(W.shard(y, rank)))
            loss.backward()
            record[f"{step}/loss"] = loss.detach().numpy()
        named = [dict(m.named_parameters()) for m in replicas]
        if step == 0:
            wrong["rank 0's half alone"] = {f"0/grad/{k}": p.grad.numpy().copy() for k, p in named[0].items()}
        for name in named[0]:
            mean = sum(n[name].grad for n in named) / len(named)
            for n, record in zip(named, records, strict=True):
                n[name].grad = mean.clone()
                record[f"{step}/grad/{name}"] = mean.numpy().copy()
        for optimizer in optimizers:
            optimizer.step()
    for m, record in zip(replicas, records, strict=True):
        record.update({f"final/{k}": t.detach().numpy().copy() for k, t in m.state_dict().items()})
    x, y = W.batches()[0]
    F.cross_entropy(full(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    wrong["the full batch"] = {f"0/grad/{k}": p.grad.numpy() for k, p in full.named_parameters()}
    return records, wrong


def _paddle_equivalent() -> tuple[list[dict], dict]:
    """As _torch_equivalent, with Paddle's DataParallel semantics: running statistics stay local."""
    import paddle
    from paddle.nn import functional as F

    replicas = [W.build("paddle") for _ in range(W.WORLD)]
    full = W.build("paddle")
    optimizers = [paddle.optimizer.Momentum(W.LR, W.MOMENTUM, parameters=m.parameters()) for m in replicas]
    records, wrong = [{} for _ in replicas], {}
    for step, (x, y) in enumerate(W.batches()):
        for rank, (m, record) in enumerate(zip(replicas, records, strict=True)):
            loss = F.cross_entropy(m(paddle.to_tensor(W.shard(x, rank))), paddle.to_tensor(W.shard(y, rank)))
            loss.backward()
            record[f"{step}/loss"] = loss.numpy()
        named = [{k: p for k, p in m.named_parameters() if p.grad is not None} for m in replicas]
        if step == 0:
            wrong["rank 0's half alone"] = {f"0/grad/{k}": p.grad.numpy().copy() for k, p in named[0].items()}
        for name in named[0]:
            mean = sum(n[name].grad for n in named) / len(named)
            for n, record in zip(named, records, strict=True):
                n[name].grad.set_value(mean)
                record[f"{step}/grad/{name}"] = mean.numpy().copy()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.clear_grad()
    for m, record in zip(replicas, records, strict=True):
        record.update({f"final/{k}": t.numpy().copy() for k, t in m.state_dict().items()})
    x, y = W.batches()[0]
    F.cross_entropy(full(paddle.to_tensor(x)), paddle.to_tensor(y)).backward()
    wrong["the full batch"] = {f"0/grad/{k}": p.grad.numpy() for k, p in full.named_parameters() if p.grad is not None}
    return records, wrong


EQUIVALENTS = {"torch": _torch_equivalent, "paddle": _paddle_equivalent}


@pytest.mark.parametrize("backend", ["torch", "paddle"])
def test_data_parallel_equals_half_batch_gradients_averaged(backend, tmp_path):
    _launch(backend, tmp_path)
    ranks = _ranks(tmp_path)
    if backend == "torch":  # README: torch's SyncBatchNorm is CUDA-only (a converted model raises on CPU)
        for record in ranks:
            message = str(record.pop("syncbn_on_cpu"))
            assert message.startswith("ValueError: SyncBatchNorm expected input tensor to be on GPU"), message
    expected, wrong = EQUIVALENTS[backend]()
    for rank, (got, want) in enumerate(zip(ranks, expected, strict=True)):
        _assert_same(got, want, f"{backend} rank {rank}")  # losses, gradients, parameters, BN statistics
    # The comparison can fail: a rank's own half-batch gradient (no averaging) and the full-batch
    # gradient (BN over all 8 samples, as one process would train) are far from what the ranks got.
    for what, grads in wrong.items():
        assert max(_rel(ranks[0][k], g) for k, g in grads.items()) > 1e-3, what


def test_sharded_jax_step_equals_the_unsharded_step(tmp_path):
    _launch("jax", tmp_path, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    sharded, single = dict(np.load(tmp_path / "sharded.npz")), dict(np.load(tmp_path / "single.npz"))
    assert any(k.startswith("final/") and "mean" in k for k in single), sorted(single)[:20]  # BN statistics compared
    _assert_same(sharded, single, "jax sharded vs unsharded")
    # BN over the global batch, not per device: the per-device (DDP-like) gradients differ.
    halves = dict(np.load(tmp_path / "halves.npz"))
    assert max(_rel(sharded[k], g) for k, g in halves.items()) > 1e-3
