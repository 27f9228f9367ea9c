"""Accelerator check: the filters' throughput on whatever device JAX sees (GPU when lent).

Run by ``benchmarks/gpu_check.sh`` on a lent GPU machine; on a CPU it runs too (use
``--quick``). Prints one markdown table and writes it to ``--out`` if given.

Measured:
- the scalar seed IMM, one series of ``T = 1e6`` steps, ``dj.Sequential()`` vs
  ``dj.Chunked()`` forward and ``value_and_grad``, float32 and float64 (issue 11);
- Kalman, one series of ``T`` steps (scalar OU), sequential (``lax.scan``) vs parallel
  (associative scan) forward and ``value_and_grad``, float32 and float64;
- batched IMM (3 scalar regimes, ``dj.seed_imm``), ``B`` paths x ``T`` steps through
  ``jit(vmap(dj.filter))``, float32 and float64, path-steps/s;
- Monte Carlo (issue 4): simulate + filter in one compiled function
  (``benchmarks/_mc_kernels.py``) at B = 1e6 paths in float32, for the scalar IMM and the
  4-feature IMM; target >= 5e9 path-steps/s on one H100-class GPU.
- Several processes (issue 14): ``dj.monte_carlo`` as 1 and 2 processes of one
  ``jax.distributed`` run started by ``python -m drift_jax.launch --platform gpu``;
- Fit (issue 5): ``dj.fit_batch`` of the 4-feature IMM (``dj.seed_imm`` with the default
  correlated features, returns and a ``dj.RiskModel``) on ``N`` simulated instruments of
  ``T`` steps, float64, ``steps`` Adam steps (``rtol=0``), second call (the first
  compiles). Its columns: path-steps fitted per second (``N * T * steps`` / wall time),
  the forward time of ``jit(vmap(dj.filter))`` on the same batch, and one gradient step
  (fit wall time / ``steps``) over that forward.
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
import optax  # noqa: E402

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


def long_rows(T, dtype):
    """One long series of the scalar seed IMM (issue 11): sequential vs chunked."""
    zs = (2.0 * jax.random.normal(jax.random.key(3), (T,))).astype(dtype)
    imm = dj.seed_imm(dj.Observation.scalar(jnp.asarray(4.0, dtype)), dtype=dtype)
    rows = []
    for name, method in (("sequential", dj.Sequential()), ("chunked", dj.Chunked())):
        fwd = jax.jit(lambda m, method=method: dj.filter(m, zs, 0.5, method=method).log_likelihood)
        vg = eqx.filter_jit(
            eqx.filter_value_and_grad(
                lambda m, method=method: dj.filter(m, zs, 0.5, method=method).log_likelihood
            )
        )
        tf = best_time(fwd, imm)
        tg = best_time(vg, imm)
        rows.append(
            (f"IMM one series {name} T={T:.0e}", jnp.dtype(dtype).name, T / tf, tf, tg / tf)
        )
    return rows


def mc_rows(B, T, dtype):
    """Simulate + filter throughput (path-steps/s) for both benchmarked IMMs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _mc_kernels as k

    rows = []
    for name, model in k.models(dtype).items():
        run = k.simulate_and_filter(k.simulator(model, T), B, jax.devices())
        key = jax.random.key(0)
        k.check_finite(run(key))
        t = best_time(run, key)
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


def process_rows(B, T, platform):
    """``dj.monte_carlo`` (scalar IMM, float32) as 1 and 2 processes of one
    ``jax.distributed`` run (``python -m drift_jax.launch --platform gpu``: one GPU per
    process, two processes sharing it on a one-GPU machine): the cost of the per-chunk
    exchange. Each run is a fresh set of processes; rows report path-steps/s."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent / "bench_montecarlo.py"
    rows = []
    for n in (1, 2):
        cmd = [sys.executable, "-m", "drift_jax.launch", "-n", str(n), "--platform", platform]
        cmd += ["--timeout", "300", str(bench), "--process-worker", "float32"]
        cmd += ["--B", str(B), "--T", str(T)]
        # This process already holds most of the GPU's memory: the children take a little.
        env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.08")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
        line = next((x for x in out.stdout.splitlines() if "ROW " in x), None)
        if out.returncode != 0 or line is None:
            print(f"process row n={n} failed:\n{out.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(line.split("ROW ", 1)[1])
        case = f"dj.monte_carlo {n} process(es) ({platform}) B={B:.0e} T={T}"
        rows.append((case, "float32", r["rate"], r["seconds"], float("nan")))
    return rows


def fit_rows(N, T, steps, dtype):
    """``dj.fit_batch`` of N instruments: fitted path-steps/s and a gradient step / forward."""
    obs = dj.scenarios.default_observation(dtype=dtype)
    truth = dj.seed_imm(obs, dtype=dtype)
    paths = dj.simulate(truth, jax.random.key(2), N, T, 0.5, return_vol=[10.0, 10.0, 30.0])
    start = eqx.tree_at(lambda m: m.transition, truth, 0.8 * truth.transition + 0.2 / 3)
    risk = dj.RiskModel(jnp.asarray(5.0, dtype), jnp.asarray(1.0, dtype))

    def run():
        return dj.fit_batch(
            start,
            paths.features,
            0.5,
            returns=paths.returns,
            risk=risk,
            optimizer=optax.adam(1e-2),  # a fixed number of steps: a throughput figure
            stages="joint",
            steps=steps,
            rtol=0,
            gtol=0,
            progress=False,
            steps_per_call=steps,
        )

    t0 = time.perf_counter()
    res = jax.block_until_ready(run())
    cold = time.perf_counter() - t0
    assert np.all(np.isfinite(np.asarray(res.losses_per_start))), "fit produced non-finite loss"
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    t_fit = time.perf_counter() - t0
    fwd = jax.jit(jax.vmap(lambda z: dj.filter(start, z, 0.5).log_likelihood))
    tf = best_time(fwd, paths.features)
    print(f"fit_batch: first call {cold:.1f} s, second {t_fit:.1f} s", flush=True)
    case = f"fit_batch 4 features N={N} T={T} x {steps} Adam steps"
    return [(case, jnp.dtype(dtype).name, N * T * steps / t_fit, tf, t_fit / steps / tf)]


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
        rows += long_rows(20_000 if args.quick else 1_000_000, dtype)
        print(f"done {jnp.dtype(dtype).name}", flush=True)
    mc_B, mc_T = (1024, 100) if args.quick else (1_000_000, 200)
    rows += mc_rows(mc_B, mc_T, jnp.float32)
    print("done Monte Carlo", flush=True)
    platform_name = "gpu" if jax.devices()[0].platform == "gpu" else "cpu"
    rows += process_rows(*((512, 100) if args.quick else (100_000, 200)), platform_name)
    print("done processes", flush=True)
    # The fit is a scan over Adam steps of a scan over time: launch-bound per time step, so
    # it is batched over instruments and kept short (about a minute with compilation).
    fit_N, fit_T, fit_steps = (8, 100, 5) if args.quick else (1024, 1000, 50)
    rows += fit_rows(fit_N, fit_T, fit_steps, jnp.float64)
    print("done fit", flush=True)
    lines = [
        head,
        "",
        "| case | dtype | (path-)steps/s | forward s | value_and_grad (fit: one step) / forward |",
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
