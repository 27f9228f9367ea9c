"""Batched IMM benchmark: drift_jax against numba, NumPy and filterpy on the same paths.

Usage::

    python benchmarks/bench_imm.py            # B = 4096 paths x T = 1000 steps, writes RESULTS.md
    python benchmarks/bench_imm.py --quick    # B = 256 x T = 200, seconds, writes nothing
    python benchmarks/bench_imm.py --B 8192 --T 500 --repeats 7 --no-write

The model is the specification's 3-regime IMM, ``dj.seed_imm(dj.Observation.scalar(R))``
(Quiet / Trending / Crisis OU members, one noisy feature), the data ``B`` paths simulated
from it (Markov regime switches, OU drift, Gaussian feature noise), the same for every
implementation. Side by side in one process:

- drift_jax through the public API, ``jax.jit(jax.vmap(lambda z: dj.filter(imm, z,
  dt).log_likelihood))(zs)``, also returning ``drift`` and ``regime_probs``; float64 and
  float32 (the model built with ``dtype=jnp.float32``, float32 data); on one XLA CPU device
  (what a plain call gets) and with the batch sharded over one CPU device per core
  (``--xla_force_host_platform_device_count``, set below before JAX starts);
- ``eqx.filter_value_and_grad`` of the summed log-likelihood with respect to the model;
- a hand-written numba ``@njit(parallel=True)`` IMM of the same maths (``_numba_imm.py``),
  one thread per core; its log-likelihoods are checked equal to drift_jax's to 1e-9;
- a NumPy IMM vectorised over paths (``_numpy_imm.py``);
- filterpy ``IMMEstimator`` on a few paths, as path-steps per second;
- the streaming ``dj.IMMDriftEstimator.update_observation`` latency, one call at a time.

Every computation is compiled and run once before it is timed; the candidates are timed
in turns, ``--repeats`` rounds, and the table gives each one's best round (the machine is
shared: compare ratios within one run).

Targets (issue 3): drift_jax float64 >= numba; float32 >= 1.5x float64; >= 3x NumPy;
>= 2000x filterpy per path-step; ``value_and_grad`` <= 3x the forward time.
"""

from __future__ import annotations

import os
import sys

from _report import usable_cores  # noqa: I001  (before JAX: it sets XLA_FLAGS)

CORES = usable_cores()
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={CORES}"
    ).strip()

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the library never does; a script may

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
from filterpy.kalman import IMMEstimator, KalmanFilter  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import drift_jax as dj  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _numba_imm  # noqa: E402
import _numpy_imm  # noqa: E402
from _report import machine_info, machine_markdown, markdown_table, write_section  # noqa: E402

R_NOISE, DT, M0, P0 = 4.0, 0.1, 0.0, 1.0
SEED = 0


def model(dtype=jnp.float64) -> dj.IMMModel:
    return dj.seed_imm(dj.Observation.scalar(R_NOISE), dtype=dtype, init_mean=M0, init_cov=P0)


def peer_params(imm: dj.IMMModel) -> dict:
    """The model's numbers, for the peers (float64 NumPy)."""
    return dict(
        theta=[float(d.theta) for d in imm.dynamics],
        sigma=[float(d.sigma) for d in imm.dynamics],
        Pi=np.asarray(imm.transition, np.float64),
        R=float(imm.observation.cov[0, 0]),
        init_probs=np.asarray(imm.init_probs, np.float64),
        init_mean=M0,
        init_var=P0,
    )


def simulate(B: int, T: int, seed: int = SEED) -> np.ndarray:
    """``[B, T]`` features from the IMM's own generative model (regime chain, OU drift)."""
    p = peer_params(model())
    rng = np.random.default_rng(seed)
    a = np.exp(-np.asarray(p["theta"]) * DT)
    s = np.asarray(p["sigma"]) * math.sqrt(DT)
    cum = np.cumsum(p["Pi"], axis=1)
    regime = rng.choice(3, size=B, p=p["init_probs"])
    mu = rng.normal(M0, math.sqrt(P0), size=B)
    zs = np.empty((B, T))
    for t in range(T):
        regime = np.minimum((rng.random(B)[:, None] > cum[regime]).sum(axis=1), 2)
        mu = a[regime] * mu + s[regime] * rng.normal(size=B)
        zs[:, t] = mu + math.sqrt(p["R"]) * rng.normal(size=B)
    return zs


# ---- the computations ------------------------------------------------------------------


def dj_forward(imm, outputs: bool):
    def one(z):
        res = dj.filter(imm, z, DT)
        return (res.log_likelihood, res.drift, res.regime_probs) if outputs else res.log_likelihood

    return jax.jit(jax.vmap(one))


def dj_loss(imm, zs):
    return jnp.sum(jax.vmap(lambda z: dj.filter(imm, z, DT).log_likelihood)(zs))


def sharded(x):
    mesh = Mesh(np.asarray(jax.devices()), ("paths",))
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("paths")))


def filterpy_imm(imm: dj.IMMModel) -> IMMEstimator:
    p = peer_params(imm)
    filters = []
    for theta, sigma in zip(p["theta"], p["sigma"], strict=True):
        kf = KalmanFilter(dim_x=1, dim_z=1)
        kf.x, kf.P = np.array([M0]), np.array([[P0]])
        kf.F, kf.Q = np.array([[math.exp(-theta * DT)]]), np.array([[sigma**2 * DT]])
        kf.H, kf.R = np.array([[1.0]]), np.array([[p["R"]]])
        filters.append(kf)
    return IMMEstimator(filters, p["init_probs"].copy(), p["Pi"].copy())


def filterpy_filter(imm: dj.IMMModel, zs: np.ndarray) -> np.ndarray:
    """Log-likelihood of each row of ``zs``: ``sum_t log sum_j cbar_j L_j`` (cbar before
    ``update``, as filterpy's docs define the IMM cycle)."""
    out = np.empty(zs.shape[0])
    for b, path in enumerate(zs):
        est, ll = filterpy_imm(imm), 0.0
        for z in path:
            est.predict()
            cbar = est.cbar.copy()
            est.update(np.array([z]))
            ll += math.log(float(np.sum(cbar * est.likelihood)))
        out[b] = ll
    return out


def streaming_latency(imm: dj.IMMModel, zs: np.ndarray, calls: int) -> dict[str, tuple]:
    """Median and best microseconds per ``update_observation`` call: the update alone
    (``block_until_ready``), and the update with the drift read back as a Python float (a
    live loop uses it before the next tick)."""
    est = dj.IMMDriftEstimator(imm)
    for z in zs[:20]:  # compile and warm up
        est = est.update_observation(float(z), DT)
        float(est.drift_rate_per_sec())
    out = {}
    for name, read in (("update", False), ("update + drift read", True)):
        times = []
        for z in zs[:calls]:
            t0 = time.perf_counter()
            est = est.update_observation(float(z), DT)
            if read:
                float(est.drift_rate_per_sec())
            else:
                jax.block_until_ready(est)
            times.append(time.perf_counter() - t0)
        out[name] = (float(np.median(times)) * 1e6, float(np.min(times)) * 1e6)
    return out


def time_in_turns(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each zero-argument callable, timed in turns (each already warm)."""
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def max_rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


# ---- the run -----------------------------------------------------------------------------


def run(B: int, T: int, repeats: int, fp_paths: int, calls: int) -> dict:
    numba.set_num_threads(CORES)
    zs64 = simulate(B, T)
    zs32 = zs64.astype(np.float32)
    imm64, imm32 = model(jnp.float64), model(jnp.float32)
    p = peer_params(imm64)
    j64, j32 = jnp.asarray(zs64), jnp.asarray(zs32)
    s64, s32 = sharded(j64), sharded(j32)

    f64, f32 = dj_forward(imm64, False), dj_forward(imm32, False)
    f64_out, f32_out = dj_forward(imm64, True), dj_forward(imm32, True)
    loss = eqx.filter_jit(dj_loss)
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(dj_loss))

    fns = {
        "dj64": lambda: f64(j64),
        "dj64_out": lambda: f64_out(j64),
        "dj32": lambda: f32(j32),
        "dj32_out": lambda: f32_out(j32),
        "dj64_shard": lambda: f64(s64),
        "dj64_out_shard": lambda: f64_out(s64),
        "dj32_shard": lambda: f32(s32),
        "loss64": lambda: loss(imm64, j64),
        "vg64": lambda: value_and_grad(imm64, j64),
        "loss64_shard": lambda: loss(imm64, s64),
        "vg64_shard": lambda: value_and_grad(imm64, s64),
        "numba64": lambda: _numba_imm.imm_filter(zs64, DT, **p),
        "numba64_out": lambda: _numba_imm.imm_filter(zs64, DT, **p, outputs=True),
        "numba32": lambda: _numba_imm.imm_filter(zs32, DT, **p),
        "numpy64": lambda: _numpy_imm.imm_filter(zs64, DT, **p),
    }
    results = {name: fn() for name, fn in fns.items()}  # compile, warm up, keep the values
    jax.block_until_ready(results)

    # The peers compute the same numbers.
    ll_dj = np.asarray(results["dj64"])
    ll_dj_out, drift_dj, probs_dj = (np.asarray(x) for x in results["dj64_out"])
    ll_nb, drift_nb, probs_nb = results["numba64_out"]
    fp_ll = filterpy_filter(imm64, zs64[:fp_paths])
    checks = {
        "numba log-likelihood": max_rel_diff(results["numba64"], ll_dj),
        "numba drift": max_rel_diff(drift_nb, drift_dj),
        "numba regime_probs": max_rel_diff(probs_nb, probs_dj),
        "numpy log-likelihood": max_rel_diff(results["numpy64"], ll_dj),
        "filterpy log-likelihood": max_rel_diff(fp_ll, ll_dj[:fp_paths]),
        "sharded == one device": max_rel_diff(results["dj64_shard"], ll_dj),
        "float32 log-likelihood": max_rel_diff(results["dj32"], ll_dj),
    }

    load_before = os.getloadavg()[0]
    best = time_in_turns(fns, repeats)
    load_after = os.getloadavg()[0]

    fp_best = math.inf
    for _ in range(max(1, repeats // 2)):
        t0 = time.perf_counter()
        filterpy_filter(imm64, zs64[:fp_paths])
        fp_best = min(fp_best, time.perf_counter() - t0)
    lat64 = streaming_latency(imm64, zs64[0], calls)
    lat32 = streaming_latency(imm32, zs32[0], calls)
    return dict(
        B=B,
        T=T,
        repeats=repeats,
        best=best,
        filterpy=dict(paths=fp_paths, seconds=fp_best),
        latency={"float64": lat64, "float32": lat32},
        checks=checks,
        load=(load_before, load_after),
        devices=len(jax.devices()),
        numba_threads=numba.get_num_threads(),
        numba_block=_numba_imm.BLOCK,
    )


ROWS = [
    # (key, label, precision)
    ("dj64", "drift_jax, log_likelihood, 1 XLA device", "float64"),
    ("dj64_out", "drift_jax, + drift, regime_probs, 1 XLA device", "float64"),
    ("dj64_shard", "drift_jax, log_likelihood, batch sharded over {dev} devices", "float64"),
    ("dj64_out_shard", "drift_jax, + drift, regime_probs, sharded", "float64"),
    ("dj32", "drift_jax, log_likelihood, 1 XLA device", "float32"),
    ("dj32_out", "drift_jax, + drift, regime_probs, 1 XLA device", "float32"),
    ("dj32_shard", "drift_jax, log_likelihood, batch sharded over {dev} devices", "float32"),
    ("numba64", "numba `@njit(parallel=True)`, {threads} threads", "float64"),
    ("numba64_out", "numba, + drift, regime_probs", "float64"),
    ("numba32", "numba `@njit(parallel=True)`, {threads} threads", "float32"),
    ("numpy64", "NumPy, vectorised over paths", "float64"),
]


def rate(run: dict, key: str) -> float:
    """Path-steps per second."""
    if key == "filterpy":
        return run["filterpy"]["paths"] * run["T"] / run["filterpy"]["seconds"]
    return run["B"] * run["T"] / run["best"][key]


def throughput_table(run: dict) -> str:
    rows = []
    fmt = dict(dev=run["devices"], threads=run["numba_threads"])
    for key, label, precision in ROWS:
        rows.append(
            [
                label.format(**fmt),
                precision,
                f"{run['best'][key] * 1e3:.1f}",
                f"{rate(run, key) / 1e6:.2f}",
                f"{rate(run, key) / rate(run, 'numba64'):.2f}x",
            ]
        )
    fp = run["filterpy"]
    rows.append(
        [
            f"filterpy `IMMEstimator`, {fp['paths']} paths x {run['T']} steps",
            "float64",
            f"{fp['seconds'] * 1e3:.1f}",
            f"{rate(run, 'filterpy') / 1e6:.4f}",
            f"{rate(run, 'filterpy') / rate(run, 'numba64'):.5f}x",
        ]
    )
    headers = ["implementation", "dtype", "best time (ms)", "M path-steps/s", "vs numba f64"]
    return markdown_table(headers, rows)


def gradient_table(run: dict) -> str:
    b = run["best"]
    rows = [
        [
            "1 XLA device",
            f"{b['loss64'] * 1e3:.1f}",
            f"{b['vg64'] * 1e3:.1f}",
            f"{b['vg64'] / b['loss64']:.2f}x",
        ],
        [
            f"sharded over {run['devices']} devices",
            f"{b['loss64_shard'] * 1e3:.1f}",
            f"{b['vg64_shard'] * 1e3:.1f}",
            f"{b['vg64_shard'] / b['loss64_shard']:.2f}x",
        ],
    ]
    headers = ["float64, summed log-likelihood", "forward (ms)", "value_and_grad (ms)", "ratio"]
    return markdown_table(headers, rows)


def targets(run: dict) -> list[tuple[str, str, float, bool]]:
    b = run["best"]
    out = []
    for where, suffix in (("1 device", ""), (f"sharded, {run['devices']} devices", "_shard")):
        r = rate(run, "dj64" + suffix) / rate(run, "numba64")
        out.append((f"float64 >= numba ({where})", "ratio", r, r >= 1.0))
    for where, suffix in (("1 device", ""), ("sharded", "_shard")):
        r = rate(run, "dj32" + suffix) / rate(run, "dj64" + suffix)
        out.append((f"float32 >= 1.5x float64 ({where})", "ratio", r, r >= 1.5))
    for where, suffix in (("1 device", ""), ("sharded", "_shard")):
        r = rate(run, "dj64" + suffix) / rate(run, "numpy64")
        out.append((f"float64 >= 3x NumPy ({where})", "ratio", r, r >= 3.0))
    r = rate(run, "dj64") / rate(run, "filterpy")
    out.append(("float64 >= 2000x filterpy per path-step (1 device)", "ratio", r, r >= 2000.0))
    for where, suffix in (("1 device", ""), ("sharded", "_shard")):
        r = b["vg64" + suffix] / b["loss64" + suffix]
        out.append((f"value_and_grad <= 3x forward ({where})", "time ratio", r, r <= 3.0))
    return out


def targets_table(run: dict) -> str:
    rows = [
        [name, f"{value:.2f} ({kind})", "met" if ok else "**missed**"]
        for name, kind, value, ok in targets(run)
    ]
    return markdown_table(["target", "measured", ""], rows)


def checks_table(run: dict) -> str:
    rows = []
    for name, value in run["checks"].items():
        tol = 1e-3 if name.startswith("float32") else 1e-9
        rows.append(
            [name, f"{value:.1e}", ("ok" if value <= tol else "**differs**") + f" ({tol:g})"]
        )
    headers = ["against drift_jax float64", "max abs diff / max(1, abs value)", "tolerance"]
    return markdown_table(headers, rows)


def latency_table(run: dict) -> str:
    rows = [
        [f"{what}, {dtype}", f"{median:.0f}", f"{best:.0f}"]
        for dtype, lat in run["latency"].items()
        for what, (median, best) in lat.items()
    ]
    return markdown_table(["IMMDriftEstimator.update_observation", "median µs", "best µs"], rows)


NOTES = """Notes:

- *1 XLA device* is what a plain call gets: XLA:CPU runs the loop body's independent
  fusions concurrently, so it uses part of the second core. *Sharded* puts one XLA CPU
  device on each core (`--xla_force_host_platform_device_count`) and the batch across them
  with a `NamedSharding`; numba runs one thread per core; NumPy runs on one core.
- The float64 cycle is memory-bound more than compute-bound: ~30 fused loops per step,
  each over `B` paths, re-read the per-regime arrays from L2/L3 (float32 halves the bytes);
  its one `log` per path-step is a scalar libm call in XLA's float64 (NumPy's and XLA's
  float32 `log` are vectorised).
- Reverse mode: the backward loop has ~4x the forward's fused loops, and the cotangent of
  each use of a shared parameter is a reduction over the batch *every step* (39 per step
  here). Under the sharded `jit` those reductions become cross-device all-reduces every
  step, hence the sharded ratio.
- Streaming: `update_observation` is one jitted step; `drift_rate_per_sec()` mixes the
  regimes with eager (op-by-op) JAX calls, which dominate a call that reads the drift."""


def report(run: dict) -> str:
    return "\n\n".join(
        [
            f"### Batched IMM: {run['B']} paths x {run['T']} steps, 3 scalar regimes "
            "(`benchmarks/bench_imm.py`)",
            "`jax.jit(jax.vmap(lambda z: dj.filter(imm, z, dt).log_likelihood))(zs)` with "
            "`imm = dj.seed_imm(dj.Observation.scalar(4.0))`, dt = 0.1 s, against peers "
            f"computing the same maths. Best of {run['repeats']} rounds timed in turns; "
            f"load average {run['load'][0]:.1f} before, {run['load'][1]:.1f} after the "
            f"timing on {run['devices']} usable cores (shared machine: compare ratios). "
            f"numba: {run['numba_threads']} threads, {run['numba_block']} paths "
            "interleaved per thread.",
            throughput_table(run),
            "Targets (issue 3)"
            + (
                ":"
                if run["B"] * run["T"] >= 4096 * 1000
                else " (a smoke-test size: not the targets' 4096 x 1000):"
            ),
            targets_table(run),
            "Reverse mode, `eqx.filter_value_and_grad` of the summed log-likelihood with "
            "respect to the model (`checkpoint=True`, the default):",
            gradient_table(run),
            "Streaming, one call at a time on the CPU after warm-up (drift read back each call):",
            latency_table(run),
            NOTES,
            "The peers agree with drift_jax (float64):",
            checks_table(run),
            "Machine:",
            machine_markdown(
                machine_info(("jax", "jaxlib", "numpy", "equinox", "numba", "filterpy"))
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="B=256, T=200; writes nothing")
    parser.add_argument("--B", type=int, default=None)
    parser.add_argument("--T", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    B = args.B or (256 if args.quick else 4096)
    T = args.T or (200 if args.quick else 1000)
    repeats = args.repeats or (3 if args.quick else 7)
    result = run(B, T, repeats, fp_paths=2 if args.quick else 4, calls=200 if args.quick else 2000)
    text = report(result)
    print(text)
    if not (args.quick or args.no_write):
        print(f"\nwritten to {write_section('imm', text)}")


if __name__ == "__main__":
    main()
