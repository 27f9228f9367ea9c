"""One long series (issue 11): sequential vs chunked (parallel-in-time) filtering, forward
and ``value_and_grad``, against a serial numba loop of the same maths.

Usage::

    python benchmarks/bench_long.py            # T = 1e5 and 1e6, writes RESULTS.md "long"
    python benchmarks/bench_long.py --quick    # T = 2e4, seconds, writes nothing

The model is the specification's 3-regime IMM, ``dj.seed_imm(dj.Observation.scalar(4.0))``
(and with the four default correlated features, ``dj.seed_imm(dj.default_observation())``),
one series simulated from it with ``dj.simulate``, ``dt = 1`` s, float64, one process (XLA:CPU
runs one device's work on one core). Side by side in one run:

- ``dj.filter(model, z, dt, method=dj.Sequential())`` (one ``lax.scan``) and
  ``method=dj.Chunked(chunk_size=L)`` for a few ``L`` (chunks filtered side by side in
  sweeps until their starts are checked to have converged): the log-likelihood under
  ``jax.jit``, and ``jax.value_and_grad`` of it with respect to the model;
- a plain 20-line ``lax.scan`` of the specification's cycle (``plain_scan_fn``), the
  speed the sequential path is held to;
- the hand-written numba IMM (``_numba_imm.py``) on the one series, one thread: the
  serial loop of the same maths (log-likelihoods checked equal to 1e-9 relative);
- a ``dj.KalmanModel`` with the four features, sequential and chunked;
- ``T = 1e6``: forward and ``value_and_grad``, chunked, with the peak resident memory of a
  process that runs only that (``resource.getrusage``).

Each computation is compiled and run once, then timed in turns, ``--repeats`` rounds; the
table gives each one's best round. Timings are noisy on a shared machine: compare the
ratios within one run.

Targets (issue 11): chunked forward <= 2x the serial numba loop; ``value_and_grad`` <= 4x
the chunked forward.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the library never does; a script may

import numba  # noqa: E402
import numpy as np  # noqa: E402

import drift_jax as dj  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _numba_imm  # noqa: E402
from _report import machine_info, machine_markdown, markdown_table, write_section  # noqa: E402

DT = 1.0
CHUNKS = (128, 256, 1024)


def series(model, T: int, seed: int = 0) -> np.ndarray:
    return np.asarray(dj.simulate(model, jax.random.key(seed), 1, T, DT).features[0])


def filter_fns(model, z, method):
    forward = jax.jit(lambda m: dj.filter(m, z, DT, method=method).log_likelihood)
    vg = jax.jit(jax.value_and_grad(lambda m: dj.filter(m, z, DT, method=method).log_likelihood))
    return forward, vg


def numba_fn(model, z):
    p = dict(
        theta=[float(d.theta) for d in model.dynamics],
        sigma=[float(d.sigma) for d in model.dynamics],
        Pi=np.asarray(model.transition, np.float64),
        R=float(model.observation.cov[0, 0]),
        init_probs=np.asarray(model.init_probs, np.float64),
        init_mean=float(model.init_mean[0]),
        init_var=float(model.init_cov[0, 0]),
    )
    zs = np.ascontiguousarray(z.reshape(1, -1))
    return lambda: _numba_imm.imm_filter(zs, DT, block=1, **p)


def plain_scan_fn(model, z):
    """The specification's cycle as a plain 20-line ``lax.scan`` (mixing, OU predict,
    scalar Kalman update, log-sum-exp Bayes): the reference the sequential path is held
    to (issue 11, item 2)."""
    import jax.numpy as jnp

    Fs, Qs = model.transitions(jnp.asarray(DT))
    a = jnp.stack([F[0, 0] for F in Fs])
    q = jnp.stack([Q[0, 0] for Q in Qs])
    Pi = model.transition_matrix()
    r = model.observation.cov[0, 0]
    M = a.shape[0]
    init = (
        jnp.log(model.init_probs),
        jnp.full((M,), model.init_mean[0]),
        jnp.full((M,), model.init_cov[0, 0]),
    )

    def step(carry, zk):
        logw, m, P = carry
        lc = jax.nn.logsumexp(logw[:, None] + jnp.log(Pi), axis=0)  # log cbar_j
        mu = jnp.exp(logw[:, None] + jnp.log(Pi) - lc[None, :])  # mu_{i|j}
        m0 = mu.T @ m
        P0 = jnp.sum(mu * (P[:, None] + (m[:, None] - m0[None, :]) ** 2), axis=0)
        mp, Pp = a * m0, a * a * P0 + q
        S = Pp + r
        K = Pp / S
        innov = zk - mp
        ll_j = -0.5 * (jnp.log(2 * jnp.pi * S) + innov**2 / S)
        post = lc + ll_j
        total = jax.nn.logsumexp(post)
        return (post - total, mp + K * innov, (1 - K) * Pp), total

    zs = jnp.asarray(z.reshape(-1))
    return jax.jit(lambda: jnp.sum(jax.lax.scan(step, init, zs)[1]))


def time_in_turns(fns: dict, repeats: int) -> dict[str, float]:
    best = {}
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile and warm up
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best.get(name, np.inf), time.perf_counter() - t0)
    return best


def run(T: int, repeats: int) -> dict:
    numba.set_num_threads(1)
    scalar = dj.seed_imm(dj.Observation.scalar(4.0))
    z1 = series(scalar, T)
    four = dj.seed_imm(dj.default_observation())
    z4 = series(four, T, seed=1)
    kalman = dj.KalmanModel(dj.OU(0.05, 1.0), dj.default_observation())
    fns, info = {}, {}
    methods = {"sequential": dj.Sequential()} | {
        f"chunked L={L}": dj.Chunked(chunk_size=L) for L in CHUNKS
    }
    for label, model, z in (("scalar", scalar, z1), ("4 features", four, z4)):
        for name, method in methods.items():
            forward, vg = filter_fns(model, z, method)
            fns[(label, name, "forward")] = lambda f=forward, m=model: f(m)
            fns[(label, name, "value_and_grad")] = lambda f=vg, m=model: f(m)
            res = dj.filter(model, z, DT, method=method)
            info[(label, name)] = dict(
                ll=float(res.log_likelihood),
                sweeps=None if res.chunked is None else int(res.chunked.sweeps),
            )
    for name, method in (("sequential", dj.Sequential()), ("chunked L=256", dj.Chunked())):
        forward, vg = filter_fns(kalman, z4, method)
        fns[("kalman 4 features", name, "forward")] = lambda f=forward: f(kalman)
        fns[("kalman 4 features", name, "value_and_grad")] = lambda f=vg: f(kalman)
        res = dj.filter(kalman, z4, DT, method=method)
        info[("kalman 4 features", name)] = dict(
            ll=float(res.log_likelihood),
            sweeps=None if res.chunked is None else int(res.chunked.sweeps),
        )
    plain = plain_scan_fn(scalar, z1)
    fns[("scalar", "plain lax.scan of the cycle (20 lines)", "forward")] = plain
    info[("scalar", "plain lax.scan of the cycle (20 lines)")] = dict(
        ll=float(plain()), sweeps=None
    )
    nb = numba_fn(scalar, z1)
    fns[("scalar", "numba serial loop (1 thread)", "forward")] = nb
    ll_numba = float(nb()[0])
    times = time_in_turns(fns, repeats)
    return dict(T=T, times=times, info=info, ll_numba=ll_numba)


def peak_memory(T: int, what: str) -> dict:
    """Wall time and peak RSS of a fresh process running one computation at ``T``."""
    code = f"""
import json, resource, time, jax
jax.config.update("jax_enable_x64", True)
import drift_jax as dj
m = dj.seed_imm(dj.Observation.scalar(4.0))
z = dj.simulate(m, jax.random.key(0), 1, {T}, {DT}).features[0]
f = lambda m: dj.filter(m, z, {DT}, method=dj.Chunked()).log_likelihood
fn = jax.jit(f if "{what}" == "forward" else jax.value_and_grad(f))
jax.block_until_ready(fn(m))
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(m))
    best = min(best, time.perf_counter() - t0)
print(json.dumps(dict(seconds=best, rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(r: dict, big: dict | None) -> str:
    t, T = r["times"], r["T"]
    rows = []
    for (label, name, kind), sec in sorted(t.items(), key=lambda kv: kv[0]):
        if kind != "forward":
            continue
        vg = t.get((label, name, "value_and_grad"))
        inf = r["info"].get((label, name), {})
        rows.append(
            [
                label,
                name,
                f"{sec * 1e3:.1f}",
                f"{T / sec / 1e6:.2f}",
                "—" if vg is None else f"{vg * 1e3:.1f}",
                "—" if vg is None else f"{vg / sec:.2f}",
                "—" if inf.get("sweeps") is None else inf["sweeps"],
            ]
        )
    table = markdown_table(
        [
            "series",
            "method",
            "forward ms",
            "M steps/s",
            "value_and_grad ms",
            "vg / forward",
            "sweeps",
        ],
        rows,
    )
    nb = t[("scalar", "numba serial loop (1 thread)", "forward")]
    best_l = min(
        (k[1] for k in t if k[0] == "scalar" and k[1].startswith("chunked") and k[2] == "forward"),
        key=lambda n: t[("scalar", n, "forward")],
    )
    fwd = t[("scalar", best_l, "forward")]
    vg = t[("scalar", best_l, "value_and_grad")]
    seq = t[("scalar", "sequential", "forward")]
    plain_name = "plain lax.scan of the cycle (20 lines)"
    plain = t[("scalar", plain_name, "forward")]
    ll_plain = r["info"][("scalar", plain_name)]["ll"]
    rel = abs(r["ll_numba"] - r["info"][("scalar", "sequential")]["ll"]) / abs(r["ll_numba"])
    lines = [
        f"One series, T = {T:,}, float64, dt = {DT} s, one process. Best of the rounds, "
        "in turns. `sweeps`: forward sweeps the chunked filter used (the check passed "
        "after them).",
        "",
        table,
        "",
        f"Targets (issue 11), scalar seed IMM, fastest chunk size ({best_l}):",
        "",
        markdown_table(
            ["target", "measured", "met"],
            [
                [
                    "chunked forward <= 2x the serial numba loop",
                    f"{fwd / nb:.2f}x ({fwd * 1e3:.1f} ms vs {nb * 1e3:.1f} ms)",
                    "yes" if fwd <= 2 * nb else "no",
                ],
                [
                    "value_and_grad <= 4x the chunked forward",
                    f"{vg / fwd:.2f}x",
                    "yes" if vg <= 4 * fwd else "no",
                ],
                [
                    "sequential forward at plain-scan speed (<= 1.2x the 20-line scan)",
                    f"{seq / plain:.2f}x ({seq * 1e3:.1f} ms vs {plain * 1e3:.1f} ms)",
                    "yes" if seq <= 1.2 * plain else "no",
                ],
                ["chunked vs sequential forward", f"{seq / fwd:.1f}x faster", "—"],
            ],
        ),
        "",
        f"numba's log-likelihood equals drift_jax's to {rel:.1e} (relative); the plain "
        f"scan's to {abs(ll_plain - r['ll_numba']) / abs(r['ll_numba']):.1e}.",
    ]
    if big is not None:
        lines += [
            "",
            "T = 1,000,000, scalar seed IMM, `dj.Chunked()`, each in a fresh process "
            "(peak RSS includes JAX itself, ~0.3 GiB):",
            "",
            markdown_table(
                ["computation", "seconds", "peak RSS GiB"],
                [
                    [k, f"{v['seconds']:.3f}", f"{v['rss_kib'] / 2**20:.2f}"]
                    for k, v in big.items()
                ],
            ),
        ]
    lines += ["", "Machine:", "", machine_markdown(machine_info())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--T", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    T = 20_000 if args.quick else args.T
    r = run(T, 2 if args.quick else args.repeats)
    big = None
    if not args.quick:
        big = {w: peak_memory(1_000_000, w) for w in ("forward", "value_and_grad")}
    text = "## One long series: sequential vs chunked (`benchmarks/bench_long.py`)\n\n" + report(
        r, big
    )
    print(text)
    if not (args.quick or args.no_write):
        print(f"\nwritten to {write_section('long', text)}")


if __name__ == "__main__":
    main()
