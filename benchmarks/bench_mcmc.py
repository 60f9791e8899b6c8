"""MCMC benchmark (benchmarks.md §5): genmodels ChEES-HMC and HMC against BlackJAX NUTS and
NumPyro NUTS.

Targets (``genmodels.distributions.mcmc_targets``, rewritten in ``jax.numpy`` for the JAX
samplers and checked to agree, log-density and gradient, at a few points): 100-D Gaussian with
condition number 100 (diagonal, log-spaced variances, the MCHMC convention) and 1e5 (the same
eigenvalues rotated by a fixed random orthogonal matrix, ``rotation_seed=0``, so that a diagonal
mass matrix cannot undo the conditioning), Banana, Neal's funnel 10-D, Rosenbrock 36-D. All
samplers run the same number of chains (128 by default) from the same initial points (standard
normal draws), in float32.

Metric (MCHMC benchmarks, per chain): after warm-up, every chain c keeps its own running
estimate Ê_{c,n}[x²] (mean over its first n post-warm-up draws), with bias per dimension
b²_{c,i}(n) = (Ê_{c,n}[x_i²] − E[x_i²])² / Var[x_i²]. Reducing over dimensions by max (``b²max``)
or by mean (``b²avg``, MCHMC's ``grads_to_low_avg``) and then averaging over the chains gives
b²(n). For n independent exact draws per chain E[b²avg] ≈ 1/n, so b²avg < 0.01 needs about 100
effective draws per chain (b²max ≈ 10× more on 100 dimensions). The cost is the number of
gradient calls per chain (and seconds) until b² stays below 0.01 for the rest of the run.

A run stops at ``max_steps`` post-warm-up transitions, at ``--time-limit`` seconds of sampling,
or, checked every ``CHUNK`` transitions, once both b² have stayed below the threshold for at
least as many transitions again as it took them to get there; the same rule, at the same
chunk boundaries, for every sampler. A cost not reached by the end of the run is ``>N``
(N = gradient calls or seconds spent).

Gradient-call convention (identical for all samplers): one gradient call = one evaluation of ∇
log p at one chain's position. Ours: the log-density passed to the sampler is wrapped in a
counter; every call (eager log-density followed by exactly one autograd gradient, or one call
of the compiled value_and_grad) evaluates the batch of all chains, so it counts as 1 gradient
call per chain (HMC: L per transition; ChEES: the jittered L of the transition, the same for
all chains; +1 at initialisation). NUTS: the per-chain ``num_integration_steps`` (BlackJAX) /
``num_steps`` (NumPyro) of each transition, averaged over chains (under ``vmap`` all chains
wait for the longest trajectory, so wall-clock follows the per-transition maximum while the
grads reported are the per-chain mean — favourable to NUTS).

Wall-clock: ours (eager PyTorch; by default the log-density and its gradient come from one
``torch.compile``d graph, ``genmodels.samplers.hmc.CompiledLogDensity``, ``--eager`` turns that
off; its compilation, ~2 s per target, is inside the tuning seconds, TorchInductor's one-time
start-up is spent untimed before the first target) is the sum of the ``kernel.step`` times (the
b² bookkeeping between steps is not timed). JAX: compilation is excluded — BlackJAX functions
are compiled ahead of time (``jit(...).lower(...).compile()``); NumPyro's warm-up is run once
untimed (it also counts the tuning grads) and then timed, and its first sampling chunk is run
once untimed before the timed chunks. A JAX chunk is one XLA call; within it, the time to
threshold is interpolated by the cumulative per-transition maximum of leapfrog steps. BlackJAX
computes the running sums and b² inside its ``lax.scan``; NumPyro returns the chunk's samples,
from which they are computed with numpy (not timed). Tuning (warm-up) grads and seconds are
reported separately and are not part of the cost.

    pip install -e '.[bench]'
    python benchmarks/bench_mcmc.py --quick          # smoke run, a few minutes on 2 cores
    python benchmarks/bench_mcmc.py [--targets gauss100 banana ...] [--chains 128]
        [--max-steps N] [--warmup 500] [--time-limit 45] [--threads 1] [--eager]
        [--chees criterion=chees step_size_adaptation=per_chain ...]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from genmodels.distributions.mcmc_targets import (
    Banana,
    IllConditionedGaussian,
    MomentTarget,
    NealsFunnel,
    Rosenbrock,
)
from genmodels.samplers.base import run_warmup
from genmodels.samplers.hmc import HMC, CompiledLogDensity

THRESHOLD = 0.01
LOG_2PI = math.log(2.0 * math.pi)
CHUNK = 100  # transitions between stopping checks (and per JAX call)

TARGETS = {
    "gauss100": lambda: IllConditionedGaussian(dim=100, condition=100.0),
    "gauss1e5": lambda: IllConditionedGaussian(dim=100, condition=1e5, rotation_seed=0),
    "banana": lambda: Banana(),
    "funnel": lambda: NealsFunnel(dim=10),
    "rosenbrock": lambda: Rosenbrock(dim=36, Q=0.1),
}
DEFAULT_MAX_STEPS = {"gauss100": 4000, "gauss1e5": 4000, "banana": 4000, "funnel": 4000, "rosenbrock": 4000}
REDUCTIONS = ("max", "avg")


@dataclass
class Result:
    """One sampler on one target. ``grads[r]`` / ``seconds[r]``: cost to b²_r < 0.01 after
    warm-up (None if not reached; then ``budget_grads`` / ``budget_seconds`` were spent)."""

    grads: dict
    seconds: dict
    budget_grads: float
    budget_seconds: float
    steps: int
    tune_grads: float
    tune_seconds: float
    final_b2: dict
    note: str = ""


# -- the metric ----------------------------------------------------------------------------


def chain_averaged_b2(s2: torch.Tensor, n: int, target: MomentTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """From per-chain sums s2 (chains, d) of x² over n draws: (mean_c max_i b²_{c,i},
    mean_c mean_i b²_{c,i}), float64 scalars."""
    per = (s2 / n - target.second_moment) ** 2 / target.variance_of_square
    return per.amax(-1).mean(), per.mean(-1).mean()


def first_stays_below(b2: np.ndarray, threshold: float = THRESHOLD) -> int | None:
    """The first index t with b2[s] < threshold for all s ≥ t, or None (last entry above)."""
    above = np.flatnonzero(~(b2 < threshold))
    if len(above) == 0:
        return 0
    return None if above[-1] == len(b2) - 1 else int(above[-1]) + 1


class Tracker:
    """Collects per-transition b² (both reductions), cumulative grads and seconds; applies the
    stopping rule and turns them into a ``Result``."""

    def __init__(self, max_steps: int, time_limit: float):
        self.max_steps, self.time_limit = max_steps, time_limit
        self.b2 = np.empty((0, 2))
        self.grads = np.empty(0)
        self.secs = np.empty(0)

    def add(self, b2: np.ndarray, cum_grads: np.ndarray, cum_secs: np.ndarray) -> bool:
        """Append a chunk (cumulative grads / seconds); True when the run should stop."""
        self.b2 = np.concatenate([self.b2, np.asarray(b2, dtype=np.float64)])
        self.grads = np.concatenate([self.grads, cum_grads])
        self.secs = np.concatenate([self.secs, cum_secs])
        n = len(self.b2)
        if n >= self.max_steps or self.secs[-1] >= self.time_limit:
            return True
        firsts = [first_stays_below(self.b2[:, k]) for k in range(2)]
        return all(t is not None and 2 * (t + 1) <= n for t in firsts)

    def result(self, tune_grads: float, tune_seconds: float, note: str) -> Result:
        grads, secs, final = {}, {}, {}
        for k, r in enumerate(REDUCTIONS):
            t = first_stays_below(self.b2[:, k])
            grads[r] = None if t is None else float(self.grads[t])
            secs[r] = None if t is None else float(self.secs[t])
            final[r] = float(self.b2[-1, k])
        steps = len(self.b2)
        if steps < self.max_steps and self.secs[-1] >= self.time_limit:
            note += f"; time limit after {steps} transitions"
        return Result(
            grads,
            secs,
            float(self.grads[-1]),
            float(self.secs[-1]),
            steps,
            tune_grads,
            tune_seconds,
            final,
            note,
        )


# -- ours ------------------------------------------------------------------------------------


COMPILE = True  # ours: log-density and gradient through ``CompiledLogDensity`` (--eager: off)


class CountingLogDensity:
    """Wraps a batched log-density; each call (batch of all chains, followed by one autograd
    gradient in ``value_and_grad``) counts as one gradient call per chain. With ``COMPILE`` the
    leapfrog integrator gets (value, gradient) from ``value_and_grad``, one ``torch.compile``d
    graph (``genmodels.samplers.hmc.CompiledLogDensity``), also counted once per call."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0
        if COMPILE:
            self._compiled = CompiledLogDensity(fn)
            self.value_and_grad = self._counted_value_and_grad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(x)

    def _counted_value_and_grad(self, x: torch.Tensor):
        self.calls += 1
        return self._compiled.value_and_grad(x)


def _sample_torch(kernel, state, counter, target, max_steps, time_limit) -> Tracker:
    """Post-warm-up loop shared by our kernels: per-chain running sums of x², b², grads, time."""
    counter.calls = 0
    tracker = Tracker(max_steps, time_limit)
    s2 = torch.zeros_like(state.position, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    elapsed, i = 0.0, 0
    while True:
        size = min(CHUNK, max_steps - i)
        b2 = torch.empty(size, 2, dtype=torch.float64)
        cum_g, cum_t = np.empty(size), np.empty(size)
        for j in range(size):
            t0 = time.perf_counter()
            state, _ = kernel.step(state, g)
            elapsed += time.perf_counter() - t0
            i += 1
            s2 += state.position.double() ** 2
            b2[j, 0], b2[j, 1] = chain_averaged_b2(s2, i, target)
            cum_g[j], cum_t[j] = counter.calls, elapsed
        if tracker.add(b2.numpy(), cum_g, cum_t):
            return tracker


def run_ours_hmc(target, init, n_warmup, max_steps, time_limit, num_leapfrog) -> Result:
    counter = CountingLogDensity(target.log_prob)
    g = torch.Generator().manual_seed(0)

    def make(eps, inv_mass):
        return HMC(step_size=eps, num_steps=num_leapfrog, inverse_mass_matrix=inv_mass)

    t0 = time.perf_counter()
    warm = run_warmup(make, init, counter, n_warmup, g, 0.8, initial_step_size=0.1, adapt_mass=True)
    tune_s, tune_g = time.perf_counter() - t0, counter.calls
    kernel = make(warm.step_size, warm.inverse_mass)
    tracker = _sample_torch(kernel, warm.state, counter, target, max_steps, time_limit)
    return tracker.result(tune_g, tune_s, f"eps={warm.step_size:.3g}, L={num_leapfrog}")


# Keyword arguments for run_chees_warmup, the same on every target; --chees KEY=VALUE overrides.
# The coordinate-wise normalized ChEES criterion (see ``normalized_chees_gradient``) instead of
# the paper's whitened ‖x − E x‖²: same T on Gaussians, no heavy-tailed coordinate dominates.
CHEES_OPTIONS: dict = {"criterion": "normalized"}


def run_ours_chees(target, init, n_warmup, max_steps, time_limit) -> Result:
    """ChEES-HMC (``genmodels.samplers.chees``): ``run_chees_warmup`` tunes ε, the trajectory
    length T and a diagonal M⁻¹ (its defaults, the same on every target, unless ``--chees``
    overrides them); then the tuned kernel samples."""
    from genmodels.samplers.chees import run_chees_warmup

    counter = CountingLogDensity(target.log_prob)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    kernel, state = run_chees_warmup(init, counter, n_warmup, g, **CHEES_OPTIONS)
    tune_s, tune_g = time.perf_counter() - t0, counter.calls
    tracker = _sample_torch(kernel, state, counter, target, max_steps, time_limit)
    eps = kernel.step_size
    eps_s = (
        f"{eps:.3g}"
        if isinstance(eps, float)
        else f"median {float(eps.median()):.3g} [{float(eps.min()):.3g}, {float(eps.max()):.3g}]"
    )
    note = f"eps={eps_s}, T={kernel.trajectory_length:.3g}, {CHEES_OPTIONS}"
    return tracker.result(tune_g, tune_s, note)


def time_transitions(num_steps: int = 50, repeats: int = 30) -> None:
    """ms per ChEES transition (128 chains, L = ``num_steps``, best of 3 × ``repeats``) on
    Rosenbrock 36-D and the funnel: eager autograd, compiled ``value_and_grad`` (what the
    benchmark's counter exposes) and ``CompiledLogDensity`` itself (fused compiled step)."""
    from genmodels.samplers.base import init_state
    from genmodels.samplers.chees import ChEESHMC

    class ValueAndGradOnly:
        def __init__(self, fn):
            self.fn, self.value_and_grad = fn, CompiledLogDensity(fn).value_and_grad

        def __call__(self, x):
            return self.fn(x)

    for name in ("rosenbrock", "funnel"):
        target = TARGETS[name]()
        x = 0.5 * torch.randn(128, target.dim, generator=torch.Generator().manual_seed(0))
        kernel = ChEESHMC(0.01, 0.5 * num_steps / 50, torch.ones(target.dim), 1000)
        g = torch.Generator().manual_seed(1)
        cells = []
        for label, f in (
            ("eager", target.log_prob),
            ("compiled value_and_grad", ValueAndGradOnly(target.log_prob)),
            ("CompiledLogDensity (fused step)", CompiledLogDensity(target.log_prob)),
        ):
            state = init_state(x, f)
            for _ in range(3):
                kernel._transition(state, g, 1.0)
            best = math.inf
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(repeats):
                    kernel._transition(state, g, 1.0)
                best = min(best, (time.perf_counter() - t0) / repeats)
            cells.append(f"{label} {best * 1e3:.2f} ms ({best / num_steps * 1e6:.0f} µs/grad)")
        print(f"[{name}] one transition, L={num_steps}: " + "; ".join(cells), flush=True)


# -- JAX targets -----------------------------------------------------------------------------


def jax_logdensity(target: MomentTarget):
    """The same log-density as ``target.log_prob``, for one point ``x`` of shape (d,)."""
    import jax.numpy as jnp

    if isinstance(target, Banana):
        c = target.curvature

        def f(x):
            r = x[1] - c * (x[0] ** 2 - 100.0)
            return -0.5 * (x[0] / 10.0) ** 2 - 0.5 * r**2 - LOG_2PI - math.log(10.0)

    elif isinstance(target, NealsFunnel):
        m = target.dim - 1

        def f(x):
            x0, rest = x[0], x[1:]
            lp0 = -0.5 * (x0 / 3.0) ** 2 - 0.5 * LOG_2PI - math.log(3.0)
            return lp0 - 0.5 * jnp.exp(-x0) * jnp.sum(rest**2) - 0.5 * m * x0 - 0.5 * m * LOG_2PI

    elif isinstance(target, IllConditionedGaussian):
        lam = jnp.asarray(target.eigenvalues.numpy(), dtype=jnp.float32)
        const = -0.5 * target.dim * LOG_2PI - 0.5 * float(target.eigenvalues.log().sum())
        if target.rotation is None:

            def f(x):
                return -0.5 * jnp.sum(x**2 / lam) + const

        else:
            rot = jnp.asarray(target.rotation.numpy(), dtype=jnp.float32)

            def f(x):
                y = x @ rot  # coordinates in the eigenbasis, as in the torch class
                return -0.5 * jnp.sum(y**2 / lam) + const

    elif isinstance(target, Rosenbrock):
        h, q = target.dim // 2, target.Q

        def f(x):
            a, b = x[:h], x[h:]
            quad = jnp.sum((a - 1.0) ** 2 + (b - a**2) ** 2 / q)
            return -0.5 * quad - h * LOG_2PI - 0.5 * h * math.log(q)

    else:
        raise TypeError(type(target))
    return f


def check_jax_target(target: MomentTarget, f) -> str:
    """Log-density and gradient of the JAX version against the torch class at 8 points."""
    import jax
    import jax.numpy as jnp

    g = torch.Generator().manual_seed(123)
    x = torch.cat(
        [target.sample(4, generator=g, dtype=torch.float64), torch.randn(4, target.dim, generator=g)]
    )
    x = x.double()
    lp_t = target.log_prob(x).numpy()
    sc_t = target.score(x).numpy()
    xj = jnp.asarray(x.numpy(), dtype=jnp.float32)
    lp_j = np.asarray(jax.vmap(f)(xj), dtype=np.float64)
    sc_j = np.asarray(jax.vmap(jax.grad(f))(xj), dtype=np.float64)
    err_lp = np.max(np.abs(lp_j - lp_t) / (1.0 + np.abs(lp_t)))
    err_sc = np.max(np.abs(sc_j - sc_t) / (1.0 + np.abs(sc_t)))
    if err_lp > 1e-4 or err_sc > 1e-3:
        raise AssertionError(f"{target.name}: jax vs torch mismatch (logp {err_lp:.2e}, score {err_sc:.2e})")
    return f"logp rel.err {err_lp:.1e}, score rel.err {err_sc:.1e}"


def _jax_chunk_costs(steps: np.ndarray, grads0: float, secs0: float, chunk_seconds: float):
    """Cumulative grads (per-chain mean) and seconds (chunk time split by the per-transition
    maximum of leapfrog steps) for one chunk; ``steps`` (T, chains)."""
    steps = np.asarray(steps, dtype=np.float64)
    cum_max = np.cumsum(steps.max(1))
    return grads0 + np.cumsum(steps.mean(1)), secs0 + chunk_seconds * cum_max / max(cum_max[-1], 1.0)


def run_blackjax(target, init, n_warmup, max_steps, time_limit, f) -> Result:
    import blackjax
    import jax
    import jax.numpy as jnp

    n = init.shape[0]
    key = jax.random.key(0)
    k_warm, k_sample = jax.random.split(key)
    pos0 = jnp.asarray(init.numpy(), dtype=jnp.float32)
    e2 = jnp.asarray(target.second_moment.numpy(), dtype=jnp.float32)
    v2 = jnp.asarray(target.variance_of_square.numpy(), dtype=jnp.float32)

    # BlackJAX's multi-chain pattern: window adaptation vmapped over chains (each chain gets its
    # own step size and diagonal inverse mass matrix), then the NUTS step vmapped over chains.
    def warm_one(k, x):
        warmup = blackjax.window_adaptation(blackjax.nuts, f)
        (state, params), info = warmup.run(k, x, num_steps=n_warmup)
        return state, params, info.info.num_integration_steps

    warm_fn = jax.jit(jax.vmap(warm_one)).lower(jax.random.split(k_warm, n), pos0).compile()
    t0 = time.perf_counter()
    states, params, tune_steps = jax.block_until_ready(warm_fn(jax.random.split(k_warm, n), pos0))
    tune_s = time.perf_counter() - t0
    tune_g = float(np.asarray(tune_steps).sum(1).mean()) + 1.0  # +1: initial gradient

    def step_one(k, state, p):
        return blackjax.nuts(f, **p).step(k, state)

    def chunk(states, s2, i0, params, key):
        def body(carry, inp):
            states, s2 = carry
            k, i = inp
            states, info = jax.vmap(step_one)(jax.random.split(k, n), states, params)
            s2 = s2 + states.position**2
            per = (s2 / i - e2) ** 2 / v2
            b2 = jnp.stack([per.max(-1).mean(), per.mean(-1).mean()])
            return (states, s2), (b2, info.num_integration_steps)

        idx = i0 + jnp.arange(1, CHUNK + 1, dtype=jnp.float32)
        (states, s2), out = jax.lax.scan(body, (states, s2), (jax.random.split(key, CHUNK), idx))
        return states, s2, out

    s2 = jnp.zeros_like(states.position)
    i0 = jnp.zeros((), jnp.float32)
    chunk_fn = jax.jit(chunk).lower(states, s2, i0, params, k_sample).compile()
    tracker = Tracker(max_steps, time_limit)
    done, grads0, secs0, key = 0, 0.0, 0.0, k_sample
    while True:
        key, k = jax.random.split(key)
        t0 = time.perf_counter()
        states, s2, (b2, steps) = jax.block_until_ready(chunk_fn(states, s2, i0 + done, params, k))
        dt = time.perf_counter() - t0
        take = min(CHUNK, max_steps - done)
        cg, cs = _jax_chunk_costs(np.asarray(steps)[:take], grads0, secs0, dt)
        done += take
        grads0, secs0 = cg[-1], cs[-1]
        if tracker.add(np.asarray(b2)[:take], cg, cs):
            break
    eps = np.asarray(params["step_size"])
    return tracker.result(tune_g, tune_s, f"eps median {np.median(eps):.3g}")


def run_numpyro(target, init, n_warmup, max_steps, time_limit, f) -> Result:
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS

    n = init.shape[0]
    pos0 = jnp.asarray(init.numpy(), dtype=jnp.float32)

    kernel = NUTS(potential_fn=lambda x: -f(x))
    counting = MCMC(
        kernel,
        num_warmup=n_warmup,
        num_samples=CHUNK,
        num_chains=n,
        chain_method="vectorized",
        progress_bar=False,
    )
    k_warm = jax.random.split(jax.random.PRNGKey(0))[0]  # numpyro wants raw uint32 keys
    # Warm-up (Stan windows, dual averaging, diagonal mass) with ``MCMC.warmup``, collecting the
    # trajectory lengths (tuning grads); its time includes compiling the warm-up.
    t0 = time.perf_counter()
    counting.warmup(k_warm, init_params=pos0, extra_fields=("num_steps",), collect_warmup=True)
    jax.block_until_ready(counting.post_warmup_state)
    tune_s = time.perf_counter() - t0
    tune_g = (
        float(np.asarray(counting.get_extra_fields(group_by_chain=True)["num_steps"]).sum(1).mean()) + 1.0
    )
    warm_state = counting.post_warmup_state
    del counting
    e2 = jnp.asarray(target.second_moment.numpy(), dtype=jnp.float32)
    v2 = jnp.asarray(target.variance_of_square.numpy(), dtype=jnp.float32)

    # Sampling: the warmed-up kernel's own transition (``NUTS.sample``, what ``MCMC.run``
    # iterates with chain_method="vectorized"; vmapped over chains by ``NUTS.init``) inside a compiled
    # ``lax.scan`` of CHUNK transitions, exactly like the BlackJAX loop. (Calling ``MCMC.run``
    # per chunk re-traces and re-compiles on every call, seconds each, which would charge
    # NumPyro for compilation.) After warm-up ``state.i >= num_warmup``, so nothing adapts.
    def chunk(state, s2, i0):
        def body(carry, i):
            state, s2 = carry
            state = kernel.sample(state, (), {})  # vmapped over chains by NUTS.init
            s2 = s2 + state.z**2
            per = (s2 / i - e2) ** 2 / v2
            b2 = jnp.stack([per.max(-1).mean(), per.mean(-1).mean()])
            return (state, s2), (b2, state.num_steps)

        idx = i0 + jnp.arange(1, CHUNK + 1, dtype=jnp.float32)
        (state, s2), out = jax.lax.scan(body, (state, s2), idx)
        return state, s2, out

    state = warm_state
    s2 = jnp.zeros_like(state.z)
    i0 = jnp.zeros((), jnp.float32)
    t0 = time.perf_counter()
    chunk_fn = jax.jit(chunk).lower(state, s2, i0).compile()
    compile_s = time.perf_counter() - t0
    tracker = Tracker(max_steps, time_limit)
    done, grads0, secs0 = 0, 0.0, 0.0
    while True:
        t0 = time.perf_counter()
        state, s2, (b2, steps) = jax.block_until_ready(chunk_fn(state, s2, i0 + done))
        dt = time.perf_counter() - t0
        cg, cs = _jax_chunk_costs(np.asarray(steps), grads0, secs0, dt)
        done += CHUNK
        grads0, secs0 = cg[-1], cs[-1]
        if tracker.add(np.asarray(b2), cg, cs):
            break
    eps = np.asarray(state.adapt_state.step_size)
    note = f"eps median {np.median(eps):.3g}; sampling compile {compile_s:.1f}s; tuning s include compiling"
    return tracker.result(tune_g, tune_s, note)


# -- report ----------------------------------------------------------------------------------


def _fmt_g(r: Result | None, red: str) -> str:
    if r is None:
        return "–"
    g = r.grads[red]
    return f"{g:,.0f}" if g is not None else f">{r.budget_grads:,.0f}"


def _fmt_s(r: Result | None, red: str) -> str:
    if r is None:
        return "–"
    s = r.seconds[red]
    return f"{s:.2f}" if s is not None else f">{r.budget_seconds:.1f}"


def _ratio(a: Result | None, b: Result | None, attr: str, red: str) -> str:
    if a is None or b is None:
        return "–"
    va, vb = getattr(a, attr)[red], getattr(b, attr)[red]
    budget = "budget_grads" if attr == "grads" else "budget_seconds"
    if va is None and vb is None:
        return "n/a"
    if va is None:  # ours did not reach it: at least budget / theirs
        return f">{getattr(a, budget) / vb:.2f}"
    if vb is None:
        return f"<{va / getattr(b, budget):.2f}"
    return f"{va / vb:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--chains", type=int, default=128)
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help=f"post-warm-up transitions (default per target: {DEFAULT_MAX_STEPS})",
    )
    p.add_argument("--warmup", type=int, default=500, help="warm-up transitions per chain (all samplers)")
    p.add_argument(
        "--time-limit", type=float, default=45.0, help="seconds of sampling per sampler and target"
    )
    p.add_argument("--num-leapfrog", type=int, default=10, help="leapfrog steps per transition of our HMC")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest here)")
    p.add_argument(
        "--eager", action="store_true", help="ours without torch.compile (CompiledLogDensity) of ∇ log p"
    )
    p.add_argument(
        "--chees",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override run_chees_warmup keyword arguments (numbers or strings)",
    )
    p.add_argument(
        "--time-transitions",
        action="store_true",
        help="only time one ChEES transition (eager vs compiled gradients) and exit",
    )
    p.add_argument("--samplers", nargs="+", default=["chees", "ours", "blackjax", "numpyro"])
    p.add_argument(
        "--quick", action="store_true", help="smoke run: warm-up 200, ≤ 300 transitions, 20 s limit"
    )
    args = p.parse_args()
    global COMPILE
    COMPILE = not args.eager
    if args.time_transitions:
        torch.set_num_threads(args.threads)
        time_transitions()
        return
    for item in args.chees:
        key, value = item.split("=", 1)
        try:
            CHEES_OPTIONS[key] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            CHEES_OPTIONS[key] = value
    if args.quick:
        args.warmup, args.max_steps, args.time_limit = 200, args.max_steps or 300, 20.0

    import jax
    import jaxlib

    versions = {"torch": torch.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__}
    for mod in ("blackjax", "numpyro"):
        versions[mod] = __import__(mod).__version__
    torch.set_num_threads(args.threads)
    print(f"# bench_mcmc — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()} "
        f"({'eager' if args.eager else 'eager sampler, torch.compile value_and_grad'}, one process); "
        f"jax devices {jax.devices()} (XLA CPU, default threading)"
    )
    print(
        "versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", python {platform.python_version()}"
    )
    steps_desc = args.max_steps if args.max_steps else DEFAULT_MAX_STEPS
    print(
        f"chains {args.chains}, warm-up {args.warmup} transitions, "
        f"max post-warm-up transitions {steps_desc}, "
        f"sampling time limit {args.time_limit:.0f}s per sampler, our HMC L={args.num_leapfrog}, float32, "
        f"threshold b² < {THRESHOLD} (b² per chain, averaged over chains)\n",
        flush=True,
    )

    # Untimed warm-up of torch (first-call allocator/thread start-up, ~seconds; with COMPILE
    # also TorchInductor's one-time start-up, ~15 s), so that the first target's timings are not
    # inflated. Each target's own compilation (~2 s) is part of its tuning seconds.
    run_ours_hmc(Banana(), torch.randn(args.chains, 2), 20, 5, 10.0, 2)

    rows = []
    for name in args.targets:
        target = TARGETS[name]()
        max_steps = math.ceil((args.max_steps or DEFAULT_MAX_STEPS[name]) / CHUNK) * CHUNK
        init = torch.randn(args.chains, target.dim, generator=torch.Generator().manual_seed(42))
        f = jax_logdensity(target)
        print(f"[{name}] jax/torch check: {check_jax_target(target, f)}", flush=True)
        res: dict[str, Result | None] = {}
        for s in args.samplers:
            t0 = time.perf_counter()
            common = (target, init, args.warmup, max_steps, args.time_limit)
            if s == "ours":
                r = run_ours_hmc(*common, args.num_leapfrog)
            elif s == "chees":
                r = run_ours_chees(*common)
            elif s == "blackjax":
                r = run_blackjax(*common, f)
            elif s == "numpyro":
                r = run_numpyro(*common, f)
            else:
                raise ValueError(s)
            res[s] = r
            print(
                f"[{name}] {s}: grads max {_fmt_g(r, 'max')} / avg {_fmt_g(r, 'avg')}, "
                f"s max {_fmt_s(r, 'max')} / avg {_fmt_s(r, 'avg')}, {r.steps} transitions; "
                f"tuning {r.tune_grads:,.0f} grads {r.tune_seconds:.1f}s; "
                f"final b² max {r.final_b2['max']:.3g} avg {r.final_b2['avg']:.3g}; {r.note} "
                f"(total {time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        rows.append((name, res))

    print("\n## Cost to b² < 0.01 (gradient calls per chain, seconds), tuning excluded\n")
    ours = [(lbl, k) for lbl, k in (("ours ChEES", "chees"), ("ours HMC", "ours")) if k in args.samplers]
    for red in REDUCTIONS:
        for label, key in ours:
            print(f"### b²{red}, {label}\n")
            print(
                "| target | ours grads | BlackJAX NUTS grads | NumPyro NUTS grads "
                "| ours s | BlackJAX s | NumPyro s | grads ours/BJ | s ours/NP |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for name, res in rows:
                o, b, n = res.get(key), res.get("blackjax"), res.get("numpyro")
                print(
                    f"| {name} | {_fmt_g(o, red)} | {_fmt_g(b, red)} | {_fmt_g(n, red)} "
                    f"| {_fmt_s(o, red)} | {_fmt_s(b, red)} | {_fmt_s(n, red)} "
                    f"| {_ratio(o, b, 'grads', red)} | {_ratio(o, n, 'seconds', red)} |"
                )
            print()
    print("## Tuning (warm-up) cost, gradient calls per chain / seconds\n")
    labels = [k for k in ("chees", "ours", "blackjax", "numpyro") if k in args.samplers]
    print("| target | " + " | ".join(f"{k} grads | {k} s" for k in labels) + " |")
    print("|---|" + "---:|" * (2 * len(labels)))
    for name, res in rows:
        cells = []
        for k in labels:
            r = res.get(k)
            cells += ["–", "–"] if r is None else [f"{r.tune_grads:,.0f}", f"{r.tune_seconds:.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
