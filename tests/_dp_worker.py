"""Data-parallel training runs launched by tests/test_data_parallel.py, each on its framework's
own engine, in float64, on 127.0.0.1 only:

    python tests/_dp_worker.py torch OUT         # DistributedDataParallel, gloo, 2 processes
    python tests/_dp_worker.py paddle OUT        # paddle.DataParallel, gloo, paddle.distributed.spawn
    python tests/_dp_worker.py jax OUT           # one process, the batch sharded over 2 CPU devices

torch and paddle: every rank writes OUT/rank{r}.npz (per step: its loss, the gradients after
backward, i.e. after the all-reduce; at the end: its parameters and BN running statistics).
jax: OUT/sharded.npz and OUT/single.npz, the same steps on the sharded and the unsharded batch,
and OUT/halves.npz, the first step's half-batch gradients averaged (what the sharded step is not).
The test computes the one-process equivalents and compares. Run from the repository root or
with resnet_multi importable.
"""

from __future__ import annotations

import copy
import os
import sys

import numpy as np

# A small model that still has everything data parallelism touches: BN in the stem, the blocks
# and a conv_bn shortcut, a max-pool, a head.
SPEC = {"name": "tiny_dp", "stages": [{"depth": 1, "channels": 8}, {"depth": 1, "channels": 16, "stride": 2}],
        "stem": {"widths": [8], "kernel_size": 3, "stride": 1, "pool": True}, "head": {"num_classes": 5}}
WORLD = 2
BATCH = 8            # global batch: 4 per rank
HW = (12, 10)
STEPS = 2
LR, MOMENTUM = 0.1, 0.9
SEED = 0


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    """The global (NCHW float64 input, int64 labels) of every step."""
    rng = np.random.default_rng(SEED)
    return [(rng.standard_normal((BATCH, 3, *HW)), rng.integers(0, 5, BATCH)) for _ in range(STEPS)]


def shard(array: np.ndarray, rank: int) -> np.ndarray:
    per = len(array) // WORLD
    return array[rank * per:(rank + 1) * per]


def spec():
    import resnet_multi as rm

    return rm.ResNetSpec.from_dict(SPEC)


def build(backend: str):
    """The float64 model of SPEC, train mode, identical initial weights in every process."""
    import resnet_multi as rm

    model = rm.build(spec(), backend, seed=SEED, dtype="float64")
    model.train()  # (paddle's train() returns None)
    return model


# --------------------------------------------------------------------------- torch: DDP


def _torch_rank(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    try:
        model = build("torch")
        ddp = DDP(model)  # broadcast_buffers=True (default): rank 0's BN statistics before every forward
        optimizer = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=MOMENTUM)
        record = {}
        for step, (x, y) in enumerate(batches()):
            optimizer.zero_grad()
            loss = F.cross_entropy(ddp(torch.from_numpy(shard(x, rank))), torch.from_numpy(shard(y, rank)))
            loss.backward()
            record[f"{step}/loss"] = loss.detach().numpy()
            record.update({f"{step}/grad/{n}": p.grad.numpy().copy() for n, p in model.named_parameters()})
            optimizer.step()
        record.update({f"final/{n}": t.detach().numpy().copy() for n, t in model.state_dict().items()})
        # The README's claim: torch's SyncBatchNorm cannot train on CPU tensors (it raises).
        sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
        try:
            sync(torch.from_numpy(shard(x, rank)))
            record["syncbn_on_cpu"] = np.array("ran")
        except ValueError as error:
            record["syncbn_on_cpu"] = np.array(f"ValueError: {error}")
        np.savez(os.path.join(out, f"rank{rank}.npz"), **record)
    finally:
        dist.destroy_process_group()


def run_torch(out: str) -> None:
    """Two ranks spawned by torch; the rendezvous store is served here, on a socket bound to
    127.0.0.1 (a store created with ``is_master=True`` would listen on every interface)."""
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's own sockets on the loopback interface too
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        store = dist.TCPStore("127.0.0.1", port, is_master=True, master_listen_fd=sock.detach(),
                              wait_for_workers=False)
        mp.spawn(_torch_rank, args=(port, out), nprocs=WORLD, join=True)
        del store


# --------------------------------------------------------------------------- paddle: DataParallel


def _paddle_rank(out: str) -> None:
    import paddle
    import paddle.distributed as dist
    from paddle.nn import functional as F

    dist.init_parallel_env()
    rank = dist.get_rank()
    model = build("paddle")
    dp = paddle.DataParallel(model)  # broadcasts rank 0's parameters once; BN statistics stay local
    optimizer = paddle.optimizer.Momentum(LR, MOMENTUM, parameters=dp.parameters())
    record = {}
    for step, (x, y) in enumerate(batches()):
        loss = F.cross_entropy(dp(paddle.to_tensor(shard(x, rank))), paddle.to_tensor(shard(y, rank)))
        loss.backward()
        record[f"{step}/loss"] = loss.numpy()
        record.update({f"{step}/grad/{n}": p.grad.numpy().copy() for n, p in model.named_parameters()
                       if p.grad is not None})
        optimizer.step()
        optimizer.clear_grad()
    record.update({f"final/{n}": t.numpy().copy() for n, t in model.state_dict().items()})
    np.savez(os.path.join(out, f"rank{rank}.npz"), **record)


def run_paddle(out: str) -> None:
    import paddle.distributed as dist

    dist.spawn(_paddle_rank, args=(out,), nprocs=WORLD, backend="gloo", ips="127.0.0.1")


# --------------------------------------------------------------------------- jax: sharded batch


def run_jax(out: str) -> None:
    """The same nnx.jit train step twice: on the batch sharded over the devices (parameters
    replicated), and on the whole batch on one device."""
    assert "--xla_force_host_platform_device_count=2" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS"
    import jax

    jax.config.update("jax_enable_x64", True)
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() == WORLD, jax.devices()
    # Auto axes: XLA propagates the sharding and inserts the all-reduces (BN statistics, gradients)
    mesh = jax.make_mesh((WORLD,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    def run(sharded: bool) -> dict:
        model = build("flax")
        optimizer = nnx.Optimizer(model, optax.sgd(LR, momentum=MOMENTUM), wrt=nnx.Param)
        if sharded:  # parameters and optimizer state replicated on every device, as the README does
            state = nnx.state((model, optimizer))
            nnx.update((model, optimizer), jax.device_put(state, NamedSharding(mesh, P())))
        record = {}
        for step, (x, y) in enumerate(batches()):
            x, y = jax.numpy.asarray(x.transpose(0, 2, 3, 1)), jax.numpy.asarray(y)  # NHWC
            if sharded:
                x = jax.device_put(x, NamedSharding(mesh, P("data")))
                y = jax.device_put(y, NamedSharding(mesh, P("data")))
                assert len(x.sharding.device_set) == WORLD and x.addressable_shards[0].data.shape[0] == BATCH // WORLD
            loss, grads = train_step(model, optimizer, x, y)
            record[f"{step}/loss"] = np.asarray(loss)
            record.update({f"{step}/grad/{k}": np.asarray(v) for k, v in _flat(grads).items()})
        record.update({f"final/{k}": np.asarray(v) for k, v in _flat(nnx.state(model)).items()})
        return record

    for name, sharded in (("single", False), ("sharded", True)):
        np.savez(os.path.join(out, f"{name}.npz"), **run(sharded))

    # What a per-device BatchNorm would give (the DDP semantics): the two half-batch gradients
    # of the first step, averaged. The test checks that the sharded step is NOT this.
    @nnx.jit
    def grads_of(model, x, y):
        return nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(model)

    model = build("flax")
    x, y = batches()[0]
    halves = [grads_of(model, jax.numpy.asarray(shard(x, r).transpose(0, 2, 3, 1)), jax.numpy.asarray(shard(y, r)))
              for r in range(WORLD)]
    mean = jax.tree.map(lambda *g: sum(g) / WORLD, *halves)
    np.savez(os.path.join(out, "halves.npz"), **{f"0/grad/{k}": np.asarray(v) for k, v in _flat(mean).items()})


def _flat(state) -> dict:
    from flax import nnx

    return {".".join(map(str, path)): value[...] for path, value in nnx.to_flat_state(state)}


if __name__ == "__main__":
    backend, out = sys.argv[1], sys.argv[2]
    if backend == "torch":
        run_torch(out)
    elif backend == "paddle":
        run_paddle(out)
    elif backend == "jax":
        run_jax(out)
    else:
        raise SystemExit(f"unknown backend {backend!r}: torch, paddle or jax")
