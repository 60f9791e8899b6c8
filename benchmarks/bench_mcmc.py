"""MCMC benchmark (benchmarks.md §5): genmodels HMC against BlackJAX NUTS and NumPyro NUTS.

Targets (``genmodels.distributions.mcmc_targets``, rewritten in ``jax.numpy`` for the JAX
samplers and checked to agree, log-density and gradient, at a few points): 100-D Gaussian with
condition number 100 and 1e5 (diagonal, log-spaced variances, MCHMC convention), Banana, Neal's
funnel 10-D, Rosenbrock 36-D. All samplers run the same number of chains (128 by default) from
the same initial points (standard normal draws), in float32.

Metric (MCHMC benchmarks): after warm-up, the running estimate Ê_n[x²] pooled over all chains
(mean over chains and over the first n post-warm-up draws) gives
b²(n) = max_i (Ê_n[x_i²] − E[x_i²])² / Var[x_i²]; the cost is the number of gradient calls per
chain until b² stays below 0.01 for the rest of the run (``steps_to_threshold``). A run that does
not stay below it by ``--max-steps`` transitions is reported as ``>N`` (N = grads spent).

Gradient-call convention: one gradient call = one evaluation of ∇ log p at one chain's
position. Ours: the log-density passed to the sampler is wrapped in a counter; each call
evaluates the batch of all chains and is followed by exactly one autograd gradient, so it counts
as 1 gradient call per chain (HMC: num_leapfrog per transition, plus 1 at initialisation).
NUTS: ``num_integration_steps`` (BlackJAX) / ``num_steps`` (NumPyro) per transition, averaged
over chains (under ``vmap`` all chains wait for the longest trajectory, so wall-clock cost
follows the per-step maximum; grads reported are the per-chain mean).

Wall-clock: ours is measured step by step (cumulative ``perf_counter``). JAX: compilation is
excluded — BlackJAX functions are compiled ahead of time (``jit(...).lower(...).compile()``)
before being timed; NumPyro's ``MCMC.run`` is called once untimed with the same arguments (same
shapes, so the second call reuses nothing but the XLA cache; see the printed compile+run vs
run times) and the second call is timed. The sampling phase of the JAX samplers is one XLA call,
so the time to threshold is the total sampling time × (cumulative per-step maximum of
leapfrog steps up to the threshold) / (its total). Tuning (warm-up) grads and seconds are
reported separately and are not included in the cost.

    pip install -e '.[bench]'
    python benchmarks/bench_mcmc.py --quick                  # smoke run, ~4 minutes on 2 cores
    python benchmarks/bench_mcmc.py [--targets gauss100 banana ...] [--chains 128]
                                    [--max-steps 5000] [--warmup 1000] [--num-leapfrog 10]
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
    steps_to_threshold,
)
from genmodels.samplers.base import run_warmup
from genmodels.samplers.hmc import HMC

THRESHOLD = 0.01
LOG_2PI = math.log(2.0 * math.pi)

TARGETS = {
    "gauss100": lambda: IllConditionedGaussian(dim=100, condition=100.0),
    "gauss1e5": lambda: IllConditionedGaussian(dim=100, condition=1e5),
    "banana": lambda: Banana(),
    "funnel": lambda: NealsFunnel(dim=10),
    "rosenbrock": lambda: Rosenbrock(dim=36, Q=0.1),
}


@dataclass
class Result:
    """One sampler on one target. ``grads`` / ``seconds``: cost to b² < 0.01 after warm-up
    (None if not reached, then ``budget_grads`` / ``budget_seconds`` were spent)."""

    grads: float | None
    seconds: float | None
    budget_grads: float
    budget_seconds: float
    tune_grads: float
    tune_seconds: float
    final_b2: float
    note: str = ""


def _cost(running_m2: torch.Tensor, target: MomentTarget, cum_grads: np.ndarray, cum_time: np.ndarray):
    """(grads, seconds) at the first step after which b² stays below the threshold."""
    t = steps_to_threshold(running_m2, target, THRESHOLD)
    if t is None:
        return None, None
    return float(cum_grads[t]), float(cum_time[t])


def _final_b2(running_m2: torch.Tensor, target: MomentTarget) -> float:
    m2 = running_m2[-1].double()
    return float(((m2 - target.second_moment) ** 2 / target.variance_of_square).max())


# -- ours ------------------------------------------------------------------------------------


class CountingLogDensity:
    """Wraps a batched log-density; each call (batch of all chains, followed by one autograd
    gradient in ``value_and_grad``) counts as one gradient call per chain."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(x)


def _sample_torch(kernel, state, counter, target, max_steps):
    """Post-warm-up loop shared by our kernels: running pooled Ê[x²], grads and times."""
    counter.calls = 0
    d = target.dim
    rows = torch.empty(max_steps, d, dtype=torch.float64)
    cum_grads = np.empty(max_steps)
    cum_time = np.empty(max_steps)
    s2 = torch.zeros(d, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for i in range(max_steps):
        state, _ = kernel.step(state, g)
        s2 += (state.position.double() ** 2).mean(0)
        rows[i] = s2 / (i + 1)
        cum_grads[i] = counter.calls
        cum_time[i] = time.perf_counter() - t0
    grads, secs = _cost(rows, target, cum_grads, cum_time)
    return grads, secs, float(cum_grads[-1]), float(cum_time[-1]), _final_b2(rows, target)


def run_ours_hmc(target, init, n_warmup, max_steps, num_leapfrog) -> Result:
    counter = CountingLogDensity(target.log_prob)
    g = torch.Generator().manual_seed(0)

    def make(eps, inv_mass):
        return HMC(step_size=eps, num_steps=num_leapfrog, inverse_mass_matrix=inv_mass)

    t0 = time.perf_counter()
    warm = run_warmup(make, init, counter, n_warmup, g, 0.8, initial_step_size=0.1, adapt_mass=True)
    tune_s, tune_g = time.perf_counter() - t0, counter.calls
    kernel = make(warm.step_size, warm.inverse_mass)
    grads, secs, bg, bs, b2 = _sample_torch(kernel, warm.state, counter, target, max_steps)
    return Result(grads, secs, bg, bs, tune_g, tune_s, b2, f"eps={warm.step_size:.3g}, L={num_leapfrog}")


def run_ours_chees(target, init, n_warmup, max_steps) -> Result | None:
    """ChEES-HMC (``genmodels.samplers.chees``): ``run_chees_warmup(position, log_density,
    num_steps, generator) -> (ChEESHMC kernel, State)`` tunes ε, the trajectory length T and a
    diagonal M⁻¹; then the tuned kernel samples. Returns None (row omitted, reported as "not
    available") when the module is missing or its API differs from this."""
    try:
        from genmodels.samplers.chees import run_chees_warmup
    except Exception:  # module not there yet, or broken
        return None
    counter = CountingLogDensity(target.log_prob)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    try:
        kernel, state = run_chees_warmup(init, counter, n_warmup, g)
    except TypeError:
        return None
    tune_s, tune_g = time.perf_counter() - t0, counter.calls
    grads, secs, bg, bs, b2 = _sample_torch(kernel, state, counter, target, max_steps)
    eps = getattr(kernel, "step_size", float("nan"))
    length = getattr(kernel, "trajectory_length", float("nan"))
    return Result(grads, secs, bg, bs, tune_g, tune_s, b2, f"ChEES eps={eps:.3g}, T={length:.3g}")


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
        assert target.rotation is None, "only the diagonal Gaussian is benchmarked"
        lam = jnp.asarray(target.eigenvalues.numpy(), dtype=jnp.float32)
        const = -0.5 * target.dim * LOG_2PI - 0.5 * float(target.eigenvalues.log().sum())

        def f(x):
            return -0.5 * jnp.sum(x**2 / lam) + const

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


def _jax_cost(m2_steps, steps, target, sample_seconds):
    """m2_steps (T, d): per-step mean over chains of x²; steps (T, n): leapfrog steps per chain."""
    m2_steps = np.asarray(m2_steps, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.float64)
    running = torch.from_numpy(np.cumsum(m2_steps, 0) / np.arange(1, len(m2_steps) + 1)[:, None])
    cum_grads = np.cumsum(steps.mean(1))
    cum_max = np.cumsum(steps.max(1))
    cum_time = sample_seconds * cum_max / cum_max[-1]
    grads, secs = _cost(running, target, cum_grads, cum_time)
    return grads, secs, float(cum_grads[-1]), float(sample_seconds), _final_b2(running, target)


def run_blackjax(target, init, n_warmup, max_steps, f) -> Result:
    import blackjax
    import jax
    import jax.numpy as jnp

    n = init.shape[0]
    key = jax.random.key(0)
    k_warm, k_sample = jax.random.split(key)
    pos0 = jnp.asarray(init.numpy(), dtype=jnp.float32)

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

    def sample(states, params, key):
        def body(states, k):
            states, info = jax.vmap(step_one)(jax.random.split(k, n), states, params)
            m2 = jnp.mean(states.position**2, axis=0)
            return states, (m2, info.num_integration_steps)

        _, out = jax.lax.scan(body, states, jax.random.split(key, max_steps))
        return out

    sample_fn = jax.jit(sample).lower(states, params, k_sample).compile()
    t0 = time.perf_counter()
    m2, steps = jax.block_until_ready(sample_fn(states, params, k_sample))
    secs = time.perf_counter() - t0
    grads, s, bg, bs, b2 = _jax_cost(m2, steps, target, secs)
    eps = np.asarray(params["step_size"])
    return Result(grads, s, bg, bs, tune_g, tune_s, b2, f"eps median {np.median(eps):.3g}")


def run_numpyro(target, init, n_warmup, max_steps, f) -> Result:
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS

    n = init.shape[0]
    pos0 = jnp.asarray(init.numpy(), dtype=jnp.float32)

    def make_mcmc():
        return MCMC(
            NUTS(potential_fn=lambda x: -f(x)),
            num_warmup=n_warmup,
            num_samples=max_steps,
            num_chains=n,
            chain_method="vectorized",
            progress_bar=False,
        )

    key = jax.random.PRNGKey(0)  # numpyro wants raw uint32 keys
    k_warm, k_sample = jax.random.split(key)
    # Warm-up (Stan windows, dual averaging, diagonal mass). A first, throwaway MCMC object
    # collects the warm-up trajectory lengths (tuning grads) and compiles; the second is timed.
    # (numpyro 0.22: after warmup(collect_warmup=True) with num_warmup != num_samples, run()
    # fails with a vmap rank error, hence the separate object.)
    counting = make_mcmc()
    t0 = time.perf_counter()
    counting.warmup(k_warm, init_params=pos0, extra_fields=("num_steps",), collect_warmup=True)
    jax.block_until_ready(counting.post_warmup_state)
    tune_compile_s = time.perf_counter() - t0
    tune_g = (
        float(np.asarray(counting.get_extra_fields(group_by_chain=True)["num_steps"]).sum(1).mean()) + 1.0
    )
    mcmc = make_mcmc()
    t0 = time.perf_counter()
    mcmc.warmup(k_warm, init_params=pos0)
    jax.block_until_ready(mcmc.post_warmup_state)
    tune_s = time.perf_counter() - t0

    # Sampling continues from post_warmup_state; the first call compiles, the second is timed
    # (run() does not move post_warmup_state, so both produce the same chains).
    t0 = time.perf_counter()
    mcmc.run(k_sample, extra_fields=("num_steps",))
    jax.block_until_ready(mcmc.get_samples())
    compile_run_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mcmc.run(k_sample, extra_fields=("num_steps",))
    x = mcmc.get_samples(group_by_chain=True)  # (n, T, d)
    jax.block_until_ready(x)
    secs = time.perf_counter() - t0
    m2 = np.asarray(jnp.mean(x**2, axis=0))
    steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"]).T  # (T, n)
    grads, s, bg, bs, b2 = _jax_cost(m2, steps, target, secs)
    note = (
        f"compile+run {compile_run_s:.1f}s vs run {secs:.1f}s; warm-up {tune_compile_s:.1f}s vs {tune_s:.1f}s"
    )
    return Result(grads, s, bg, bs, tune_g, tune_s, b2, note)


# -- report ----------------------------------------------------------------------------------


def _fmt_g(r: Result | None) -> str:
    if r is None:
        return "–"
    return f"{r.grads:,.0f}" if r.grads is not None else f">{r.budget_grads:,.0f}"


def _fmt_s(r: Result | None) -> str:
    if r is None:
        return "–"
    return f"{r.seconds:.2f}" if r.seconds is not None else f">{r.budget_seconds:.2f}"


def _ratio(a: Result | None, b: Result | None, attr: str) -> str:
    if a is None or b is None:
        return "–"
    va, vb = getattr(a, attr), getattr(b, attr)
    if va is None or vb is None:
        return "n/a"
    return f"{va / vb:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--chains", type=int, default=128)
    p.add_argument("--max-steps", type=int, default=5000, help="post-warm-up transitions per chain")
    p.add_argument("--warmup", type=int, default=1000, help="warm-up transitions per chain (all samplers)")
    p.add_argument("--num-leapfrog", type=int, default=10, help="leapfrog steps per transition of our HMC")
    p.add_argument("--samplers", nargs="+", default=["ours", "chees", "blackjax", "numpyro"])
    p.add_argument("--quick", action="store_true", help="smoke run: warm-up 100, 200 steps")
    args = p.parse_args()
    if args.quick:
        args.warmup, args.max_steps = 100, 200

    import jax
    import jaxlib

    versions = {"torch": torch.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__}
    for mod in ("blackjax", "numpyro"):
        versions[mod] = __import__(mod).__version__
    torch.set_num_threads(torch.get_num_threads())
    print(f"# bench_mcmc — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}; jax devices {jax.devices()}"
    )
    print(
        "versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", python {platform.python_version()}"
    )
    print(
        f"chains {args.chains}, warm-up {args.warmup} transitions, max {args.max_steps} post-warm-up "
        f"transitions, our HMC L={args.num_leapfrog}, float32, threshold b²(max) < {THRESHOLD}\n",
        flush=True,
    )

    # Untimed warm-up of torch (first-call allocator/thread start-up, ~seconds), so that the
    # first target's timings are not inflated.
    run_ours_hmc(Banana(), torch.randn(args.chains, 2), 20, 5, 2)

    rows = []
    for name in args.targets:
        target = TARGETS[name]()
        init = torch.randn(args.chains, target.dim, generator=torch.Generator().manual_seed(42))
        f = jax_logdensity(target)
        print(f"[{name}] jax/torch check: {check_jax_target(target, f)}", flush=True)
        res: dict[str, Result | None] = {}
        for s in args.samplers:
            t0 = time.perf_counter()
            if s == "ours":
                res[s] = run_ours_hmc(target, init, args.warmup, args.max_steps, args.num_leapfrog)
            elif s == "chees":
                res[s] = run_ours_chees(target, init, args.warmup, args.max_steps)
            elif s == "blackjax":
                res[s] = run_blackjax(target, init, args.warmup, args.max_steps, f)
            elif s == "numpyro":
                res[s] = run_numpyro(target, init, args.warmup, args.max_steps, f)
            r = res[s]
            if r is None:
                print(f"[{name}] {s}: not available (hook)", flush=True)
                continue
            print(
                f"[{name}] {s}: grads {_fmt_g(r)}, s {_fmt_s(r)}, tuning {r.tune_grads:,.0f} grads "
                f"{r.tune_seconds:.1f}s, final b² {r.final_b2:.3g}, {r.note} "
                f"(total {time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        rows.append((name, res))

    ours_rows = [("ours HMC", "ours")] + (
        [("ours ChEES", "chees")] if any(r.get("chees") for _, r in rows) else []
    )
    print("\n## Cost to b² < 0.01 (gradient calls per chain, seconds), tuning excluded\n")
    for label, key in ours_rows:
        print(f"### {label}\n")
        print(
            "| target | ours grads | BlackJAX NUTS grads | NumPyro NUTS grads "
            "| ours s | BlackJAX s | NumPyro s | grads ours/BJ | grads ours/NP | s ours/BJ | s ours/NP |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, res in rows:
            o, b, n = res.get(key), res.get("blackjax"), res.get("numpyro")
            print(
                f"| {name} | {_fmt_g(o)} | {_fmt_g(b)} | {_fmt_g(n)} "
                f"| {_fmt_s(o)} | {_fmt_s(b)} | {_fmt_s(n)} "
                f"| {_ratio(o, b, 'grads')} | {_ratio(o, n, 'grads')} "
                f"| {_ratio(o, b, 'seconds')} | {_ratio(o, n, 'seconds')} |"
            )
        print()
    print("## Tuning (warm-up) cost, gradient calls per chain / seconds\n")
    labels = [k for k in ("ours", "chees", "blackjax", "numpyro") if any(r.get(k) for _, r in rows)]
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
