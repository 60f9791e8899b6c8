"""Data-parallel training under ``torchrun`` with PyTorch's DistributedDataParallel (DDP).

``genmodels.train.train`` calls the functions here; nothing changes for a single process.
Launch N processes (one per GPU, or N CPU processes with gloo) with::

    torchrun --nproc_per_node N -m genmodels train realnvp --data 8gaussians --device cuda

What a DDP run does, and why it equals a single process:

- **Data.** Every rank draws the same *global* batch of ``batch_size`` examples from the
  same data generator (seeded as in a single process) and keeps its slice
  ``batch[r·B/N : (r+1)·B/N]`` (:func:`shard`); ``batch_size`` must be divisible by N. DDP
  averages the gradients of the N slice-mean losses, which is the gradient of the global
  batch-mean loss, so a family whose loss is a mean of per-example terms with no noise
  (realnvp, maf, nsf, made) follows the single-process run with batch B up to float rounding.
- **Gradients.** The model is wrapped in ``torch.nn.parallel.DistributedDataParallel``
  (NCCL on CUDA, gloo on CPU). DDP only sees computations that run through the wrapper's
  forward, so families compute their differentiated losses with ``Model.call("loss", …)``
  (the wrapped module's forward dispatches to the named method); the default ``Model.step``
  does, and so do gan and wgan-gp, whose step makes several passes (``d_steps``
  discriminator updates, then a generator update), each through ``call`` and each reaching
  one player only: such a family sets ``Model.ddp_find_unused`` and DDP is built with
  ``find_unused_parameters=True`` (the other player's gradients are left alone). So do coop
  (an EBM pass, then the generator's) and triangle (the EBM's pass, then the generator and
  inference model's, with the EBM frozen; its reparameterised draws x̃ = g(z) + σε, which that
  pass differentiates, are made inside it from noise drawn before). WGAN-GP's gradient penalty
  differentiates D with respect to its input (``autograd.grad``, ``create_graph``) inside the
  call; only the final backward reaches the weights, so DDP averages the gradient of the whole
  critic loss. A family whose ``step`` bypasses ``call`` gets
  :class:`~genmodels.models.base.NotSupportedError` after its first step, before anything is
  saved (every family of the library routes its losses).
- **MCMC inside a step** (ebm; coop's revision and z inference, triangle's refined negatives,
  and both families' persistent chains) runs on the plain module, never through the wrapper: it
  differentiates f with respect to x only (parameters frozen) and its samples are not
  differentiated with respect to the weights, so DDP has nothing to average there; through
  the wrapper it would only cost a forward's bookkeeping per chain run, and would count as a
  routed call, letting a step whose loss bypassed DDP pass :func:`check_routed`. Only the loss
  on the finished chains goes through ``call``. (A DDP forward that is never backpropagated is
  tolerated by torch's reducer, which is also what a skipped update relies on, below.)
- **Decisions that change the weights or shared state are global.** Every rank must take
  the same branch, or the ranks drift apart (or hang in a collective): ebm's step-size
  adaptation uses the acceptance rate averaged over the ranks (:func:`mean_across`); its
  health check (divergence → restore the last good state, halve lr and step size, skip the
  backward) reads the logged scalars averaged over the ranks before deciding, so a NaN on one
  rank stops the update on all; its persistent chains are one buffer shared by all ranks:
  each rank advances its own draw of chains with its own noise, and the updates of all ranks
  are gathered (:func:`gather_across`) and written in rank order on every rank, so the
  buffer, the per-chain step sizes and their median stay identical everywhere (the N ranks
  together advance as many chains per step as one process with the global batch). A
  checkpoint (rank 0's) therefore holds every rank's chains, and a resume, with any world
  size, starts all ranks from that one buffer. In one process these helpers are the
  identity, so a single-process run is bit for bit what it was without DDP.
- **A family holding an EBM as a submodule** (coop, triangle) reuses these pieces, but only
  the top model is wrapped, so the EBM's own ``data_parallel`` is False: the parent's step
  drives the global decisions, passing its ``data_parallel`` to the EBM's helpers (``across``
  of ``EBM._ml_negatives``, ``_gathered``, ``_global_logs``) and putting the EBM's differentiated
  objective inside a loss of its own that goes through its ``call``. Its revision or refining
  step size adapts to the acceptance averaged over the ranks; its persistent chains are the
  one shared buffer, the ``buffer_chains`` of a step split evenly over the ranks (so each rank's
  pooled loss weighs draws and chains as one process with the global batch does); coop's
  health check (restore, halve lr and step size) reads the logs averaged over the ranks, and
  its generator's σ (a moving average of the regression loss) and the finiteness checks of
  both families read the losses averaged over the ranks, so all ranks raise together.
- **Buffers.** DDP broadcasts rank 0's buffers at every forward (``broadcast_buffers``), so
  state a family keeps in buffers (normalization, step counters, fm's reflow pairs) is
  rank 0's on every rank, and rank 0's checkpoint holds what all ranks use. A family that
  keeps its buffers identical by itself (``Model.ddp_sync_buffers = False``: ebm, coop and
  triangle, whose chains, step sizes, σ and counters are updated by the global decisions
  above) is synced once,
  when the wrapper is built, and not at every forward: the broadcast would copy its chain
  buffer every step for nothing, and would hide a desynchronisation that the tests should see.
- **Noise.** The model generator (the noise of a family's loss: diffusion times and ε, fm's
  source points, vae's reparameterisation, a GAN's latent z and WGAN-GP's interpolation ε,
  ebm's data noise, chain draws, MCMC proposals and NCE noise, the latents and draws of coop's
  and triangle's generators) is seeded per rank
  (:func:`rank_seed`; rank 0 keeps the single-process seed), so the ranks draw independent
  noise. A noisy family therefore equals the single-process run in distribution (same data,
  same estimator of the same gradient), not draw for draw. Every rank's generator state goes
  into the checkpoint.
- **Checkpoints and logs** are written by rank 0 only; the logged scalars (loss, …) are
  averaged over the ranks first, so the divergence guard fires on every rank at once.
- **Resume** restores every rank's generator state when the world size is unchanged (exact);
  with another world size rank 0 continues the saved stream and the other ranks are seeded
  from (seed, rank, step). State kept in buffers comes from rank 0's checkpoint on every
  rank; for ebm (and coop's and triangle's EBM) that is the whole shared chain buffer (no
  rank's chains are lost). Its in-memory recovery snapshot is not checkpointed (after a
  resume the first step takes a new one), as in one process.
- **Evaluation** in the loop runs on rank 0 alone, on the plain module (no collective call
  inside a sampler, so an adaptive ODE solver taking different step counts cannot hang the
  others), and the metrics are broadcast: they are those of a single-process evaluation of
  the same weights. To spread the sampling of an evaluation over the ranks, call e.g.
  ``evaluate_model(ShardedSampler(model), …)`` on every rank: each rank draws its share of
  the samples with its own generator and the shares are gathered (:class:`ShardedSampler`);
  ``ShardedSampler(model, world_size=N)`` in one process draws the very same samples.

In short, a family trains correctly under DDP when (1) every loss it differentiates goes
through ``Model.call`` (and ``ddp_find_unused`` is set if its passes reach different parameter
subsets), while computations that are not differentiated with respect to the weights (MCMC,
sampling) stay on the plain module; (2) every decision that changes the weights or state all
ranks share depends only on values that are identical on every rank (weights, global batch,
statistics averaged with :func:`mean_across`, updates gathered with :func:`gather_across`);
(3) state in buffers is either rank 0's by design (DDP's broadcast) or kept identical by the
family (``ddp_sync_buffers = False``); (4) one process computes exactly what it did before.
tests/test_ddp.py checks each for the families that train under DDP: equal state on both ranks,
equality with one process that simulates the two ranks, and which methods went through the
wrapper.
"""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from genmodels.models.base import Model, NotSupportedError

#: The environment a ``torchrun`` worker gets (WORLD_SIZE > 1 means a distributed launch).
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAUNCH = "launch with: torchrun --nproc_per_node N -m genmodels train ..."


@dataclass
class Context:
    """Where this process stands: rank, world size, its device, and whether it made the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    owns_group: bool = False
    """True when :func:`setup` initialised the process group (it lives until the process exits)"""

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str, timeout_s: float = 1800.0) -> Context:
    """The distributed context of this process, initialising the process group under torchrun.

    Uses a group already initialised by the caller (``torch.distributed.init_process_group``);
    otherwise reads torchrun's environment. Without WORLD_SIZE > 1 the run is a single process
    (``Context().active`` is False). Raises ValueError, naming the problem, for a wrong launch.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        owns = False
    else:
        world = _env_int("WORLD_SIZE", 1)
        if world < 1:
            raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
        if world == 1:
            if os.environ.get("RANK", "0") != "0":
                raise ValueError(f"RANK is {os.environ['RANK']} but WORLD_SIZE is not set; {LAUNCH}")
            return Context(device=_single_device(device))
        missing = [v for v in TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; {LAUNCH}")
        rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside 0..{world - 1}")
        owns = True
    dev = _rank_device(device, local)
    if owns:
        if not dist.is_available():
            raise ValueError("this PyTorch build has no torch.distributed; train in one process")
        _init_group("nccl" if dev.type == "cuda" else "gloo", timeout_s)
    return Context(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def _init_group(backend: str, timeout_s: float) -> None:
    """Initialise the default group from torchrun's environment, to be destroyed at exit.

    The group is kept for the life of the process (a later train() call, e.g. a resume, reuses it:
    re-initialising on torchrun's store can race with the old group's keys), and destroyed by an
    exit handler while the interpreter is still whole. For that to free it, nothing else may hold
    it: ``torch.distributed.nn.functional`` binds ``group.WORLD`` into its functions' defaults when
    it is first imported, and the first DistributedDataParallel imports it (through torch._dynamo).
    Imported after the group exists, it would keep the group alive to the end: its gloo worker
    threads then outlive the interpreter, and one still releasing a finished collective's tensors
    at that moment aborts the process ("terminate called without an active exception", seen in
    about 1 of 50 CLI runs under torchrun on a loaded machine). Imported first, it binds None.
    """
    import torch.distributed.nn.functional  # noqa: F401  (before the group: see above)

    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    atexit.register(_destroy)


def _destroy() -> None:
    """Destroy the default group: its worker threads finish and are joined before the interpreter
    is torn down. A DistributedDataParallel wrapper left in a reference cycle would still hold the
    group, so cycles are collected first."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _single_device(name: str) -> torch.device:
    from genmodels.train import resolve_device

    return resolve_device(name)


def _rank_device(name: str, local_rank: int) -> torch.device:
    """Under DDP: the CPU, or the GPU cuda:LOCAL_RANK (one GPU per process)."""
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"distributed training runs on cpu (gloo) or cuda (nccl), not --device {name}")
    if device.index is not None:
        raise ValueError(
            f"--device {name}: under torchrun each process uses the GPU cuda:LOCAL_RANK; pass --device cuda"
        )
    if not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available on this machine")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
            "use --nproc_per_node <= the number of GPUs"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


# -- the model -------------------------------------------------------------------------
def wrap(model: Model, ctx: Context) -> DistributedDataParallel:
    """Wrap ``model`` in DDP and attach the wrapper, so that ``Model.call`` runs through it.

    The wrapper is kept outside the module tree (no submodule, no state-dict entry).
    Construction broadcasts rank 0's parameters and buffers to every rank. A family whose
    backward passes each reach only part of its parameters (``Model.ddp_find_unused``, e.g. a
    GAN's two players) gets ``find_unused_parameters=True``: DDP then finds the parameters a
    pass left out and leaves their gradients alone. A family with ``Model.ddp_sync_buffers``
    False gets its buffers broadcast here only, not at every forward.
    """
    ddp = DistributedDataParallel(
        _Dispatch(model),
        device_ids=[ctx.local_rank] if ctx.device is not None and ctx.device.type == "cuda" else None,
        find_unused_parameters=type(model).ddp_find_unused,
    )  # buffers: rank 0's broadcast now, and at every forward unless the family keeps them in sync
    if not type(model).ddp_sync_buffers:
        # set after construction (not ``broadcast_buffers=False``), so that the buffers are still
        # synced once now; torch >= 2.13 names the attribute forward_sync_buffers (this setter)
        ddp.broadcast_buffers = False
    model.__dict__["_ddp"] = ddp
    model.__dict__["_ddp_calls"] = 0
    return ddp


class _Dispatch(nn.Module):
    """What DDP wraps: its forward runs ``model.<method>(*args, **kwargs)``, so any of a
    family's methods can go through DDP (families keep their own ``forward``, e.g. a flow's)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.model, method)(*args, **kwargs)


def unwrap(model: Model) -> None:
    """Detach the DDP wrapper again (the model is an ordinary module afterwards)."""
    model.__dict__.pop("_ddp", None)
    model.__dict__.pop("_ddp_calls", None)


def check_routed(model: Model) -> None:
    """After a step under DDP: raise NotSupportedError if it never went through the wrapper."""
    if model.__dict__.get("_ddp_calls", 0) == 0:
        raise NotSupportedError(
            f"the {model.family} family cannot train under DistributedDataParallel: its step() computes "
            "its losses without Model.call, so the gradients would not be averaged across ranks; "
            "train it in one process"
        )


# -- data, randomness, logs --------------------------------------------------------------
def check_batch(batch_size: int, ctx: Context) -> None:
    if ctx.active and batch_size % ctx.world_size:
        raise ValueError(
            f"batch-size {batch_size} (the global batch) must be divisible by the {ctx.world_size} processes"
        )


def shard(batch: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's contiguous slice of the global batch."""
    if not ctx.active:
        return batch
    b = batch.shape[0] // ctx.world_size
    return batch[ctx.rank * b : (ctx.rank + 1) * b]


def rank_seed(seed: int, rank: int, *extra: int) -> int:
    """A 63-bit seed for ``rank`` (NumPy's SeedSequence hash of (seed, rank, *extra));
    rank 0 with no ``extra`` keeps ``seed`` itself, so rank 0 draws what one process would."""
    if rank == 0 and not extra:
        return seed
    words = [int(v) % 2**32 for v in (seed, rank, *extra)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def world_size() -> int:
    """The number of ranks in the default group, 1 when there is none (e.g. for a family that splits
    a global count, such as coop's persistent chains per step, over the ranks)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def process_rank() -> int:
    """This process's rank in the default group, 0 when there is none."""
    return dist.get_rank() if world_size() > 1 else 0


def mean_across(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` averaged over the ranks (a new tensor, same dtype and device), for a statistic
    that drives a decision every rank must take alike (e.g. the mean MCMC acceptance that adapts
    a step size). The identity, ``tensor`` itself, when no process group is active.

    Collective: under a process group every rank must call it, in the same order.
    """
    world = world_size()
    if world == 1:
        return tensor
    total = tensor.detach().to(_device_for(tensor), copy=True)
    dist.all_reduce(total)
    return (total / world).to(tensor.device)


def _device_for(tensor: torch.Tensor) -> torch.device:
    """Where a collective on ``tensor`` runs: the CPU under gloo; a GPU under NCCL (the tensor's
    own, or this process's current one for a CPU tensor such as a vector of logged scalars)."""
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    if tensor.device.type == "cuda":
        return tensor.device
    return torch.device("cuda", torch.cuda.current_device())


def gather_across(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``[tensor of rank 0, tensor of rank 1, …]`` (every rank's ``tensor`` must have the same
    shape and dtype), ``[tensor]`` when no process group is active. Collective, as
    :func:`mean_across`."""
    world = world_size()
    if world == 1:
        return [tensor]
    mine = tensor.detach().to(_device_for(tensor)).contiguous()
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    return [p.to(tensor.device) for p in parts]


def mean_logs(logs: dict[str, float], ctx: Context) -> dict[str, float]:
    """The logged scalars averaged over the ranks (identical on every rank afterwards)."""
    if not ctx.active or not logs:
        return logs
    keys = sorted(logs)
    values = mean_across(torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64))
    return dict(zip(keys, values.tolist(), strict=True))


def gather_objects(obj: Any, ctx: Context) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank (``[obj]`` in one process)."""
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: Context) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.active:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- evaluation ------------------------------------------------------------------------
def shard_sizes(n: int, world_size: int) -> list[int]:
    """How ``n`` samples split over the ranks (the first ``n mod N`` ranks take one more)."""
    return [n // world_size + (1 if r < n % world_size else 0) for r in range(world_size)]


class ShardedSampler:
    """A view of ``model`` whose ``sample(n, generator=g)`` draws the n samples across ranks.

    One seed s is drawn from ``g`` (every rank draws the same); rank r draws its share
    (:func:`shard_sizes`) with a generator seeded ``rank_seed(s, r, 1)`` on the model's device,
    and the shares are all-gathered in rank order, so every rank returns the same ``(n, dim)``
    tensor. Each rank samples with no collective call inside, so adaptive solvers that take
    different numbers of steps on different ranks cannot deadlock; the gather waits for the
    slowest. Everything else (``log_prob``, ``family``, parameters, …) is the model's own.

    With ``world_size`` given and no process group (or outside one), the shares of all
    ``world_size`` ranks are drawn here in turn: the same samples a distributed evaluation
    gathers, so ``evaluate_model(ShardedSampler(m, world_size=N), target, generator=g)`` in one
    process equals ``evaluate_model(ShardedSampler(m), target, generator=g)`` on N ranks.
    """

    def __init__(self, model: Model, world_size: int | None = None) -> None:
        self._model = model
        live = dist.is_available() and dist.is_initialized()
        self._collective = live and world_size is None
        self.world_size = dist.get_world_size() if self._collective else (world_size or 1)
        self.rank = dist.get_rank() if self._collective else None
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **options: Any) -> torch.Tensor:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        seed = int(torch.randint(0, 2**62, (), generator=g, device=g.device))
        sizes = shard_sizes(n, self.world_size)
        device = self._model.device

        def share(r: int) -> torch.Tensor:
            gen = torch.Generator(device=device).manual_seed(rank_seed(seed, r, 1))
            return self._model.sample(sizes[r], generator=gen, **options)

        if not self._collective:
            return torch.cat([share(r) for r in range(self.world_size)])
        assert self.rank is not None
        mine = share(self.rank)
        comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
        padded = torch.zeros(sizes[0], mine.shape[1], dtype=mine.dtype, device=comm)
        padded[: mine.shape[0]] = mine.to(comm)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:k] for p, k in zip(parts, sizes, strict=True)]).to(device)
