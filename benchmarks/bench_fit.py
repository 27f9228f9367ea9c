"""Fit benchmark (issues 5 and 11): ``dj.fit`` of the 3-regime IMM with 4 correlated features.

Data: ``dj.simulate`` from ``dj.seed_imm`` (Quiet / Trending / Crisis, the seed transition
matrix per cycle) observed through the four default correlated features
(``dj.default_observation()``), ``dt = 0.5`` s, and returns with a per-regime volatility of
10 / 10 / 30 bps per sqrt(s). The fit starts from perturbed parameters (every ``theta``
and ``sigma`` off by a factor 0.6-2, ``R`` 1.25x too large, ``Pi`` pulled 20% toward
uniform, return vols 6 / 6 / 20) with ``dj.fit``'s defaults: L-BFGS to a gradient norm of
1e-6, two stages with returns (the filter on the features: theta, sigma, R, Pi; then the
return model ``dj.RegimeReturnModel`` with the filter held), ``method=None`` (the chunked
filter for a long series).

Measured, float64, one process (XLA:CPU runs one device's work on one core):

1. recovery at scale, one series of ``--T`` steps: wall time of the first ``dj.fit`` call
   and its compile time (the trace / lower / compile events JAX reports through
   ``jax.monitoring``), steps and gradient norms per stage, one forward pass; every
   estimate with its standard error (``dj.standard_errors`` of each stage) and its z
   against the truth;
2. ``--N`` instruments of ``--batch-T`` steps: ``dj.fit_batch`` (one ``vmap``-ed loop)
   against ``--N`` sequential ``dj.fit`` calls, wall time with and without compilation,
   and the largest difference of the fitted parameters between the two.

Writes the ``fit`` section of ``benchmarks/RESULTS.md`` (not with ``--quick``).

Usage: ``python benchmarks/bench_fit.py [--T 100000] [--steps 500] [--N 16]
[--batch-T 10000] [--batch-steps 200] [--quick]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the library never does; a script may

import numpy as np  # noqa: E402

import drift_jax as dj  # noqa: E402

HERE = Path(__file__).resolve().parent
DT = 0.5  # seconds per step
RETURN_VOL = (10.0, 10.0, 30.0)  # bps / sqrt(s) per regime: sigma_base 10, amplifier 2
TRUE_RISK = (10.0, 2.0)
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
    """Seconds JAX spent tracing, lowering and compiling since the last ``reset``."""

    def __init__(self):
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event, duration, **_):
        if event in COMPILE_EVENTS:
            self.seconds += duration

    def reset(self):
        self.seconds = 0.0


def true_model() -> dj.IMMModel:
    return dj.seed_imm(dj.default_observation())


def perturbed(truth: dj.IMMModel) -> dj.IMMModel:
    """The starting point: every regime's theta and sigma off, R 1.25x too wide (as a
    calibration of R on its own might leave it), Pi pulled 20% toward uniform."""
    theta_factor, sigma_factor = (1.5, 0.6, 2.0), (0.7, 1.4, 0.6)
    dynamics = tuple(
        dj.OU(float(d.theta) * ft, float(d.sigma) * fs)
        for d, ft, fs in zip(truth.dynamics, theta_factor, sigma_factor, strict=True)
    )
    R = np.asarray(truth.observation.cov)
    obs = dj.Observation(np.asarray(truth.observation.loadings), 1.25 * R)
    M = truth.num_regimes
    Pi = 0.8 * np.asarray(truth.transition) + 0.2 / M
    return dj.IMMModel(
        dynamics,
        obs,
        Pi,
        truth.init_probs,
        truth.init_mean,
        truth.init_cov,
        regime_names=truth.regime_names,
        crisis_regime="Crisis",
    )


def named_values(model, risk) -> dict[str, float]:
    """The parameters by ``dj.standard_errors``' names (R's lower triangle, all of Pi)."""
    out = {}
    for i, d in enumerate(model.dynamics):
        out[f"dynamics[{i}].theta"] = float(d.theta)
        out[f"dynamics[{i}].sigma"] = float(d.sigma)
    R = np.asarray(model.observation.cov)
    for i, j in zip(*np.tril_indices(R.shape[0]), strict=True):
        out[f"observation.cov[{i},{j}]"] = float(R[i, j])
    Pi = np.asarray(model.transition)
    for i, j in np.ndindex(*Pi.shape):
        out[f"transition[{i},{j}]"] = float(Pi[i, j])
    if risk is not None:
        out["risk.sigma_base"] = float(risk.sigma_base)
        out["risk.crisis_amplifier"] = float(risk.crisis_amplifier)
    return out


def best_of(fn, repeats=3) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def stop_step(history: np.ndarray, rtol=1e-7, patience=5) -> int | None:
    """The step at which dj.fit's default early stopping (rtol, patience) would have ended
    the fit, from a full loss history; None if it never would."""
    rel = np.abs(np.diff(history)) <= rtol * np.abs(history[:-1])
    calm = 0
    for k, small in enumerate(rel, start=1):
        calm = calm + 1 if small else 0
        if calm >= patience:
            return k
    return None


def one_series(T: int, steps: int, clock: CompileClock) -> dict:
    """Recovery at scale (issue 11, item 5): ``dj.fit``'s defaults on one long series."""
    truth = true_model()
    vols_true = np.asarray(RETURN_VOL)
    paths = dj.simulate(truth, jax.random.key(0), 1, T, DT, return_vol=RETURN_VOL)
    zs, returns = paths.features[0], paths.returns[0]
    start, ret0 = perturbed(truth), dj.RegimeReturnModel([6.0, 6.0, 20.0])

    forward = jax.jit(lambda m, z: dj.filter(m, z, DT).log_likelihood)
    t_forward = best_of(lambda: forward(start, zs))

    clock.reset()
    t0 = time.perf_counter()
    res = dj.fit(start, zs, DT, returns=returns, risk=ret0, steps=steps, progress=False)
    jax.block_until_ready(res)
    wall = time.perf_counter() - t0
    compile_s = clock.seconds

    t0 = time.perf_counter()
    se_filter = dj.standard_errors(res.stage1, zs, DT)
    se_returns = dj.standard_errors(res, zs, DT, returns=returns, trainable=lambda p: p.risk)
    t_se = time.perf_counter() - t0
    true_v, start_v = named_values(truth, None), named_values(start, None)
    for j, vol in enumerate(vols_true):
        true_v[f"risk.vols[{j}]"] = float(vol)
        start_v[f"risk.vols[{j}]"] = float(ret0.vols[j])
    params = []
    for se in (se_filter, se_returns):
        table = se.table
        for name in table.index:
            est, err = float(table.loc[name, "estimate"]), float(table.loc[name, "std_err"])
            params.append(
                dict(
                    name=name,
                    truth=true_v.get(name, np.nan),
                    start=start_v.get(name, np.nan),
                    fitted=est,
                    se=err,
                    z=(est - true_v.get(name, np.nan)) / err if err > 0 else np.nan,
                    identified=bool(table.loc[name, "identified"]),
                )
            )
    loss_true = float(dj.fit_loss(truth, zs, DT))
    return dict(
        T=T,
        wall=wall,
        compile=compile_s,
        forward=t_forward,
        loss_true=loss_true,
        loss_stage1=float(res.stage1.losses_per_start[0]),
        stage1_steps=int(res.stage1.num_steps),
        stage2_steps=int(res.num_steps),
        grad_stage1=float(res.stage1.grad_norm),
        grad_stage2=float(res.grad_norm),
        converged=bool(res.converged) and bool(res.stage1.converged),
        stages=res.stages,
        params=params,
        se_seconds=t_se,
        # Over the identified free coordinates: an unidentified direction (a sigma at its
        # lower bound, a Pi entry at 0) has no standard error and its Newton step is NaN.
        newton=max(float(np.nanmax(np.abs(se.newton_step))) for se in (se_filter, se_returns)),
        regime_share=np.bincount(np.asarray(paths.regimes[0]), minlength=3) / T,
    )


def batch_vs_sequential(N: int, T: int, steps: int, clock: CompileClock) -> dict:
    truth = true_model()
    paths = dj.simulate(truth, jax.random.key(1), N, T, DT, return_vol=RETURN_VOL)
    zs, returns = paths.features, paths.returns
    start = perturbed(truth)
    options = dict(risk=dj.RegimeReturnModel([6.0, 6.0, 20.0]), steps=steps, progress=False)

    clock.reset()
    t0 = time.perf_counter()
    batched = dj.fit_batch(start, zs, DT, returns=returns, **options)
    jax.block_until_ready(batched)
    wall_b, compile_b = time.perf_counter() - t0, clock.seconds

    clock.reset()
    t0 = time.perf_counter()
    singles = []
    for i in range(N):
        r = dj.fit(start, zs[i], DT, returns=returns[i], **options)
        singles.append(jax.block_until_ready(r))
    wall_s, compile_s = time.perf_counter() - t0, clock.seconds

    diff, loss_diff = 0.0, 0.0
    for i, r in enumerate(singles):
        loss_diff = max(
            loss_diff, abs(float(batched.losses_per_start[i, 0] - r.losses_per_start[0]))
        )
        one = jax.tree.map(lambda x, i=i: x[i], batched.params)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(r.params), strict=True):
            a, b = np.asarray(a), np.asarray(b)
            diff = max(diff, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))))
    return dict(
        N=N,
        T=T,
        steps=steps,
        wall_batch=wall_b,
        compile_batch=compile_b,
        wall_seq=wall_s,
        compile_seq=compile_s,
        max_rel_diff=diff,
        max_loss_diff=loss_diff,
    )


def report(one: dict, many: dict, quick: bool) -> str:
    sys.path.insert(0, str(HERE))
    from _report import machine_info, machine_markdown, markdown_table

    run_s = one["wall"] - one["compile"]
    timing = markdown_table(
        ["quantity", "value"],
        [
            ["series", f"T = {one['T']:,} steps of dt = {DT} s, 4 features, 3 regimes"],
            ["stages", " then ".join(one["stages"])],
            [
                "L-BFGS steps: stage 1 (filter) / stage 2 (return model)",
                f"{one['stage1_steps']} / {one['stage2_steps']}",
            ],
            [
                "gradient norm at the end: stage 1 / stage 2 (gtol 1e-6)",
                f"{one['grad_stage1']:.1e} / {one['grad_stage2']:.1e}",
            ],
            ["FitResult.converged (both stages)", f"{one['converged']}"],
            ["total wall time of dj.fit (first call)", f"{one['wall']:.1f} s"],
            ["  of which compilation", f"{one['compile']:.1f} s"],
            ["  of which the steps", f"{run_s:.1f} s"],
            [
                "one forward pass, jit(dj.filter) log-likelihood (chunked)",
                f"{one['forward']:.4f} s",
            ],
            [
                "feature loss per step: stage-1 fit / at the truth",
                f"{one['loss_stage1']:.6f} / {one['loss_true']:.6f}",
            ],
            [
                "largest Newton step left (identified parameters), in standard errors",
                f"{one['newton']:.2g}",
            ],
            ["dj.standard_errors, both stages (Hessians)", f"{one['se_seconds']:.1f} s"],
        ],
    )
    rows = []
    for p in one["params"]:
        rows.append(
            [
                f"`{p['name']}`",
                f"{p['truth']:.4g}",
                f"{p['start']:.4g}",
                f"{p['fitted']:.4g}",
                f"{p['se']:.2g}",
                f"{p['z']:+.2f}",
                "yes" if p["identified"] else "no",
            ]
        )
    ident = [p for p in one["params"] if p["identified"] and np.isfinite(p["z"])]
    within3 = sum(abs(p["z"]) <= 3.0 for p in ident)
    within2 = sum(abs(p["z"]) <= 2.0 for p in ident)
    worst = max(ident, key=lambda p: abs(p["z"]))
    gap = (one["loss_true"] - one["loss_stage1"]) * one["T"]
    reading = (
        f"{within3} of the {len(ident)} identified parameters are within 3 standard errors "
        f"of the truth ({within2} within 2; the largest |z| is {abs(worst['z']):.2f}, "
        f"`{worst['name']}`). The stage-1 fit's feature likelihood beats the truth's by "
        f"{gap:.1f} nats (about half the {len(ident)} free coordinates is expected of a "
        "correctly specified maximum)."
    )
    params = markdown_table(
        ["parameter", "truth", "start", "fitted", "std err", "z", "identified"], rows
    )
    b = many
    speed = b["wall_seq"] / b["wall_batch"]
    speed_run = (b["wall_seq"] - b["compile_seq"]) / (b["wall_batch"] - b["compile_batch"])
    batch = markdown_table(
        ["instruments", "how", "wall s", "compile s", "wall s without compile"],
        [
            [
                b["N"],
                "dj.fit_batch (one program; chunked on CPU: instruments in turn)",
                f"{b['wall_batch']:.1f}",
                f"{b['compile_batch']:.1f}",
                f"{b['wall_batch'] - b['compile_batch']:.1f}",
            ],
            [
                b["N"],
                f"{b['N']} sequential dj.fit",
                f"{b['wall_seq']:.1f}",
                f"{b['compile_seq']:.1f}",
                f"{b['wall_seq'] - b['compile_seq']:.1f}",
            ],
        ],
    )
    share = ", ".join(f"{s:.0%}" for s in one["regime_share"])
    size_note = (
        f"**Measured sizes**: the {b['N']}-instrument comparison uses T = {b['T']:,} steps "
        f"per instrument and at most {b['steps']} L-BFGS steps per stage."
    )
    quick_note = "**Quick run (`--quick`): tiny sizes, not the benchmark.**\n\n" if quick else ""
    return (
        f"## Fitting (`benchmarks/bench_fit.py`)\n\n{quick_note}"
        f"Recovery at scale (issue 11, item 5): `dj.fit` with its defaults (L-BFGS, two "
        f"stages with returns, `method=None` = `dj.Chunked()` at this length) of "
        f"`dj.seed_imm` with the 4 default correlated features on {one['T']:,} steps "
        f"simulated by `dj.simulate` (dt = {DT} s; regimes Quiet / Trending / Crisis "
        f"{share} of the steps) and their returns (vol 10 / 10 / 30 bps per sqrt(s) by "
        f"regime), float64, one process on one XLA CPU device. The start is perturbed "
        f"(theta x 1.5 / 0.6 / 2, sigma x 0.7 / 1.4 / 0.6, R x 1.25, Pi 20% toward "
        f"uniform); stage 1 trains theta, sigma, R and Pi on the features, stage 2 the "
        f"return model `dj.RegimeReturnModel` (one vol per regime, start 6 / 6 / 20, "
        f"ordered as the truth: a mixture has a local optimum for each ordering) "
        f"with the filter held. Compilation time is what JAX reports for tracing, "
        f"lowering and compiling (`jax.monitoring`); the machine is shared, so compare "
        f"ratios within one run.\n\n{timing}\n\n"
        f"{reading}\n\n"
        f"Every estimate against the truth, with standard errors from the observed "
        f"information at the fit (`dj.standard_errors` of each stage; Pi by the delta "
        f"method):\n\n"
        f"{params}\n\n"
        f"### {b['N']} instruments: `dj.fit_batch` vs {b['N']} sequential `dj.fit`\n\n"
        f"{size_note}\n\n{batch}\n\n"
        f"Batched / sequential speed-up: {speed:.1f}x with compilation, "
        f"{speed_run:.1f}x without. Largest relative difference of the fitted parameters, "
        f"batched vs sequential: {b['max_rel_diff']:.1e}; of the final losses (per step): "
        f"{b['max_loss_diff']:.1e}.\n\n"
        f"{machine_markdown(machine_info(('jax', 'jaxlib', 'numpy', 'equinox', 'optax')))}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=100_000, help="steps of the single series")
    ap.add_argument("--steps", type=int, default=500, help="most L-BFGS steps per stage")
    ap.add_argument("--N", type=int, default=16, help="instruments of the batch comparison")
    ap.add_argument("--batch-T", type=int, default=10_000, help="steps per instrument")
    ap.add_argument("--batch-steps", type=int, default=200, help="most steps per instrument")
    ap.add_argument("--quick", action="store_true", help="T=2000, 30 steps, N=4; no RESULTS.md")
    args = ap.parse_args()
    if args.quick:
        args.T, args.steps, args.N, args.batch_T, args.batch_steps = 2000, 30, 4, 500, 20
    clock = CompileClock()
    one = one_series(args.T, args.steps, clock)
    print(f"single fit done: {one['wall']:.1f} s", flush=True)
    many = batch_vs_sequential(args.N, args.batch_T, args.batch_steps, clock)
    print("batch comparison done", flush=True)
    body = report(one, many, args.quick)
    print(body)
    if not args.quick:
        sys.path.insert(0, str(HERE))
        from _report import write_section

        write_section("fit", body)


if __name__ == "__main__":
    main()
