"""Accelerator check: the filters' throughput on whatever device JAX sees (GPU when lent).

Run by ``benchmarks/gpu_check.sh`` on a lent GPU machine; on a CPU it runs too (use
``--quick``). Prints one markdown table and writes it to ``--out`` if given.

Measured:
- Kalman, one series of ``T`` steps (scalar OU), sequential (``lax.scan``) vs parallel
  (associative scan) forward and ``value_and_grad``, float32 and float64;
- batched IMM (3 scalar regimes, ``dj.seed_imm``), ``B`` paths x ``T`` steps through
  ``jit(vmap(dj.filter))``, float32 and float64, path-steps/s;
- Monte Carlo (issue 4): simulate + filter in one compiled function
  (``benchmarks/_mc_kernels.py``) at B = 1e6 paths in float32, for the scalar IMM and the
  4-feature IMM; target >= 5e9 path-steps/s on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)  # both precisions available; models pick theirs

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import drift_jax as dj  # noqa: E402


def best_time(fn, *args, repeats=2):
    jax.block_until_ready(fn(*args))  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def kalman_rows(T, dtype):
    rng = np.random.default_rng(0)
    zs = jnp.asarray(rng.normal(size=T), dtype)
    model = dj.KalmanModel(
        dj.OU(jnp.asarray(0.05, dtype), jnp.asarray(0.5, dtype)),
        dj.Observation.scalar(jnp.asarray(1.0, dtype)),
        jnp.zeros((), dtype),
        jnp.ones((), dtype),
    )
    rows = []
    for method in ("sequential", "parallel"):
        fwd = jax.jit(lambda m, method=method: dj.filter(m, zs, 0.1, method=method).log_likelihood)
        vg = eqx.filter_jit(
            eqx.filter_value_and_grad(
                lambda m, method=method: dj.filter(m, zs, 0.1, method=method).log_likelihood
            )
        )
        tf = best_time(fwd, model)
        tg = best_time(vg, model)
        rows.append((f"Kalman {method} T={T:.0e}", jnp.dtype(dtype).name, T / tf, tf, tg / tf))
    return rows


def imm_rows(B, T, dtype, with_grad=True):
    key = jax.random.key(1)
    # Generated on the device: B x T float64 is 8 GB at B = 1e6.
    zs = (2.0 * jax.random.normal(key, (B, T))).astype(dtype)
    imm = dj.seed_imm(dj.Observation.scalar(jnp.asarray(4.0, dtype)), dtype=dtype)
    fwd = jax.jit(jax.vmap(lambda z: dj.filter(imm, z, 0.5).log_likelihood))
    tf = best_time(fwd, zs)
    ratio = float("nan")
    if with_grad:
        # Reverse mode stores the per-step carry of every path: B * T * 3M floats.

        def total(m, z):
            return jnp.sum(jax.vmap(lambda zz: dj.filter(m, zz, 0.5).log_likelihood)(z))

        vg = eqx.filter_jit(eqx.filter_value_and_grad(total))
        ratio = best_time(vg, imm, zs) / tf
    return [(f"IMM B={B:.0e} T={T}", jnp.dtype(dtype).name, B * T / tf, tf, ratio)]


def mc_rows(B, T, dtype):
    """Simulate + filter throughput (path-steps/s) for both benchmarked IMMs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _mc_kernels as k

    rows = []
    for name, model in k.models(dtype).items():
        run = k.simulate_and_filter(k.simulator(model, T), jax.random.key(0))
        ids = k.path_ids(B, jax.devices())
        k.check_finite(run(ids))
        t = best_time(run, ids)
        rows.append(
            (
                f"MC simulate+filter {name} B={B:.0e} T={T}",
                jnp.dtype(dtype).name,
                B * T / t,
                t,
                float("nan"),
            )
        )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds on a CPU)")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args()
    # A sequential scan on a GPU costs a few microseconds per step (launch-bound), so the
    # long series is 2e5 steps here; the parallel form is what a GPU is for.
    T_kalman = 10_000 if args.quick else 200_000
    imm_sizes = (
        [(1024, 100, True)] if args.quick else [(100_000, 1000, True), (1_000_000, 1000, False)]
    )
    dev = jax.devices()[0]
    head = (
        f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, "
        f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    rows = []
    for dtype in (jnp.float32, jnp.float64):
        rows += kalman_rows(T_kalman, dtype)
        for B, T, grad in imm_sizes:
            rows += imm_rows(B, T, dtype, grad)
        print(f"done {jnp.dtype(dtype).name}", flush=True)
    mc_B, mc_T = (1024, 100) if args.quick else (1_000_000, 200)
    rows += mc_rows(mc_B, mc_T, jnp.float32)
    print("done Monte Carlo", flush=True)
    lines = [
        head,
        "",
        "| case | dtype | (path-)steps/s | forward s | value_and_grad / forward |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {c} | {d} | {r:.3g} | {t:.4f} | {g:.2f} |" for c, d, r, t, g in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
