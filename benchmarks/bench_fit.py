"""Fit benchmark (issue 5): ``dj.fit`` of the 3-regime IMM with 4 correlated features.

Data: ``dj.simulate`` from ``dj.seed_imm`` (Quiet / Trending / Crisis, the seed transition
matrix per cycle) observed through the four default correlated features
(``dj.scenarios.default_observation()``), ``dt = 0.5`` s, and returns with a
per-regime volatility of 10 / 10 / 30 bps per sqrt(s), i.e. ``dj.RiskModel(sigma_base=10,
crisis_amplifier=2)`` when the regime is known. The fit starts from perturbed parameters
(every ``theta`` and ``sigma`` off by a factor 0.6-2, ``R`` 1.25x too large, ``Pi`` pulled
20% toward uniform, risk (5, 1)) and trains ``dj.fit``'s
default fields with returns: the regimes' ``theta`` and ``sigma``, ``R``, ``Pi``,
``sigma_base`` and ``crisis_amplifier`` (the loadings and the initial prior are held), with
``optax.adam(1e-2)`` for ``--steps`` steps (``rtol=0``: every step runs).

Measured, float64, one process (XLA:CPU runs one device's work on one core):

1. one series of ``--T`` steps: total wall time of the first ``dj.fit`` call, its compile
   time (the trace / lower / compile events JAX reports through ``jax.monitoring``), the
   seconds per gradient step (the rest divided by the steps), one forward pass
   (``jit(dj.filter)`` log-likelihood, best of 3) and the ratio; the final loss against
   the loss at the truth, ``FitResult.converged``, and the fitted parameters against the
   truth in standard errors (``dj.standard_errors`` at the fit);
2. ``--N`` instruments of ``--batch-T`` steps, ``--batch-steps`` Adam steps each:
   ``dj.fit_batch`` (one ``vmap``-ed loop) against ``--N`` sequential ``dj.fit`` calls,
   wall time with and without compilation, and the largest difference of the fitted
   parameters between the two.

Writes the ``fit`` section of ``benchmarks/RESULTS.md`` (not with ``--quick``).

Usage: ``python benchmarks/bench_fit.py [--T 100000] [--steps 300] [--N 16]
[--batch-T 10000] [--batch-steps 100] [--quick]``
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
    return dj.seed_imm(dj.scenarios.default_observation())


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
    truth, risk_true = true_model(), dj.RiskModel(*TRUE_RISK)
    paths = dj.simulate(truth, jax.random.key(0), 1, T, DT, return_vol=RETURN_VOL)
    zs, returns = paths.features[0], paths.returns[0]
    start, risk0 = perturbed(truth), dj.RiskModel(5.0, 1.0)

    forward = jax.jit(lambda m, z: dj.filter(m, z, DT).log_likelihood)
    t_forward = best_of(lambda: forward(start, zs))

    clock.reset()
    t0 = time.perf_counter()
    res = dj.fit(start, zs, DT, returns=returns, risk=risk0, steps=steps, rtol=0, progress=False)
    jax.block_until_ready(res)
    wall = time.perf_counter() - t0
    compile_s = clock.seconds
    per_step = (wall - compile_s) / steps

    loss_true = float(dj.fit_loss(truth, zs, DT, returns=returns, risk=risk_true))
    loss_start = float(res.loss_history[0])
    loss_final = float(res.losses_per_start[0])
    history = np.asarray(res.loss_history)

    def split(model, risk):  # (feature NLL, return NLL) per step
        f = float(dj.feature_nll(model, zs, DT)) / T
        return f, float(dj.return_nll(model, risk, zs, DT, returns)) / T

    nll = {
        "start": split(start, risk0),
        "fitted": split(res.model, res.risk),
        "truth": split(truth, risk_true),
    }

    t0 = time.perf_counter()
    se = dj.standard_errors(res, zs, DT, returns=returns)
    t_se = time.perf_counter() - t0
    table = se.table
    true_v, start_v = named_values(truth, risk_true), named_values(start, risk0)
    params = []
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
            )
        )
    return dict(
        T=T,
        steps=steps,
        wall=wall,
        compile=compile_s,
        per_step=per_step,
        forward=t_forward,
        loss_true=loss_true,
        loss_start=loss_start,
        loss_final=loss_final,
        nll=nll,
        rel_change_last=abs(history[-1] - history[-2]) / abs(history[-2]),
        converged=bool(res.converged),
        num_steps=int(res.num_steps),
        would_stop=stop_step(history),
        params=params,
        se_seconds=t_se,
        newton=float(np.max(np.abs(se.newton_step))),
        regime_share=np.bincount(np.asarray(paths.regimes[0]), minlength=3) / T,
    )


def batch_vs_sequential(N: int, T: int, steps: int, clock: CompileClock) -> dict:
    truth = true_model()
    paths = dj.simulate(truth, jax.random.key(1), N, T, DT, return_vol=RETURN_VOL)
    zs, returns = paths.features, paths.returns
    start, risk0 = perturbed(truth), dj.RiskModel(5.0, 1.0)
    options = dict(risk=risk0, steps=steps, rtol=0, progress=False)

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

    diff = 0.0
    for i, r in enumerate(singles):
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
    )


def report(one: dict, many: dict, quick: bool) -> str:
    sys.path.insert(0, str(HERE))
    from _report import machine_info, machine_markdown, markdown_table

    run_s = one["wall"] - one["compile"]
    timing = markdown_table(
        ["quantity", "value"],
        [
            ["series", f"T = {one['T']:,} steps of dt = {DT} s, 4 features, 3 regimes"],
            ["Adam steps (rtol = 0)", f"{one['steps']}"],
            ["total wall time of dj.fit (first call)", f"{one['wall']:.1f} s"],
            ["  of which compilation", f"{one['compile']:.1f} s"],
            ["  of which the steps", f"{run_s:.1f} s"],
            ["seconds per gradient step", f"{one['per_step']:.3f} s"],
            ["one forward pass, jit(dj.filter) log-likelihood", f"{one['forward']:.3f} s"],
            ["gradient step / forward pass", f"{one['per_step'] / one['forward']:.2f}x"],
            [
                "loss per step: start / fitted / at the truth",
                f"{one['loss_start']:.6f} / {one['loss_final']:.6f} / {one['loss_true']:.6f}",
            ],
            [
                "feature NLL per step: start / fitted / at the truth",
                " / ".join(f"{one['nll'][k][0]:.6f}" for k in ("start", "fitted", "truth")),
            ],
            [
                "return NLL per step: start / fitted / at the truth",
                " / ".join(f"{one['nll'][k][1]:.6f}" for k in ("start", "fitted", "truth")),
            ],
            ["relative loss change over the last step", f"{one['rel_change_last']:.1e}"],
            [
                "FitResult.converged (rtol = 0 never stops)",
                f"{one['converged']} ({one['num_steps']} steps)",
            ],
            [
                "default early stop (rtol 1e-7, patience 5) would end at step",
                "never" if one["would_stop"] is None else f"{one['would_stop']}",
            ],
            [
                "largest Newton step left, in standard errors",
                f"{one['newton']:.2f}"
                + (
                    " (flat or downward directions: not at an optimum)"
                    if not np.isfinite(one["newton"])
                    else ""
                ),
            ],
            ["dj.standard_errors at the fit (Hessian)", f"{one['se_seconds']:.1f} s"],
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
                f"{p['z']:+.1f}",
            ]
        )
    zs = np.array([p["z"] for p in one["params"]])
    finite = np.isfinite(zs)
    within2 = int(np.sum(np.abs(zs[finite]) <= 2.0))
    n_par = len(one["params"])
    gap = one["loss_true"] - one["loss_final"]
    d_feat = one["nll"]["fitted"][0] - one["nll"]["truth"][0]
    d_ret = one["nll"]["fitted"][1] - one["nll"]["truth"][1]
    reading = (
        f"The fitted loss is {abs(gap):.2e} per step {'below' if gap > 0 else 'above'} the "
        f"loss at the truth ({gap * one['T']:,.0f} nats in total; feature NLL "
        f"{d_feat * one['T']:+,.0f}, return NLL {d_ret * one['T']:+,.0f} nats against the "
        f"truth). For a correctly specified likelihood the maximum beats the truth by about "
        f"half the number of free coordinates, a dozen nats"
    )
    reading += (
        ", so the minimum of this objective lies elsewhere than the simulating parameters."
        if gap * one["T"] > 5.0 * n_par
        else "."
    )
    if d_feat > 0 > d_ret:
        reading += (
            " The fit gives up feature likelihood to gain return likelihood: the return model "
            "(one normal with sigma_effective from the filter's uncertain P(Crisis)) does not "
            "match returns drawn with the true regime's volatility, and its gradient reaches "
            "the regime parameters through P(Crisis)."
        )
    params = markdown_table(
        ["parameter", "truth", "start", "fitted", "std err", "(fitted - truth) / se"], rows
    )
    b = many
    speed = b["wall_seq"] / b["wall_batch"]
    speed_run = (b["wall_seq"] - b["compile_seq"]) / (b["wall_batch"] - b["compile_batch"])
    batch = markdown_table(
        ["instruments", "how", "wall s", "compile s", "wall s without compile"],
        [
            [
                b["N"],
                "dj.fit_batch (vmap)",
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
        f"**Measured sizes**: the {b['N']}-instrument comparison uses T = {b['T']:,} steps and "
        f"{b['steps']} Adam steps per instrument, not T = {one['T']:,} and {one['steps']}: "
        f"{b['N']} sequential fits at full size would take about {b['N']} x "
        f"{one['wall']:.0f} s on this machine."
        if (b["T"], b["steps"]) != (one["T"], one["steps"])
        else ""
    )
    quick_note = "**Quick run (`--quick`): tiny sizes, not the benchmark.**\n\n" if quick else ""
    return (
        f"## Fitting (`benchmarks/bench_fit.py`)\n\n{quick_note}"
        f"`dj.fit` of `dj.seed_imm` with the 4 default correlated features on "
        f"{one['T']:,} simulated steps (dt = {DT} s; regimes Quiet / Trending / Crisis "
        f"{share} of the steps) and their returns (vol 10 / 10 / 30 bps per sqrt(s) by "
        f"regime), float64, one process on one XLA CPU device. The start is perturbed "
        f"(theta x 1.5 / 0.6 / 2, sigma x 0.7 / 1.4 / 0.6, R x 1.25, Pi 20% toward "
        f"uniform, risk (5, 1)); `dj.fit`'s default trainable fields with returns "
        f"(dynamics, R, Pi, sigma_base, crisis_amplifier), `optax.adam(1e-2)`, "
        f"`rtol=0`. Compilation time is what JAX reports for tracing, lowering and "
        f"compiling (`jax.monitoring`); the machine is shared, so compare ratios within "
        f"one run.\n\n{timing}\n\n"
        f"{reading}\n\n"
        f"Fitted parameters against the truth, with standard errors from the observed "
        f"information at the fit (`dj.standard_errors`; NaN where the Hessian there has a "
        f"flat or downward direction); {within2} of the {int(finite.sum())} with a standard "
        f"error {'is' if within2 == 1 else 'are'} within 2 of the truth. The return-risk "
        f"truth (10, 2) holds "
        f"when the regime is known; the fit scores returns under the filter's "
        f"P(Crisis), which is uncertain, so the amplifier is not a pure recovery check.\n\n"
        f"{params}\n\n"
        f"### {b['N']} instruments: `dj.fit_batch` vs {b['N']} sequential `dj.fit`\n\n"
        f"{size_note}\n\n{batch}\n\n"
        f"Batched / sequential speed-up: {speed:.1f}x with compilation, "
        f"{speed_run:.1f}x without. Largest relative difference of the fitted parameters, "
        f"batched vs sequential: {b['max_rel_diff']:.1e}.\n\n"
        f"{machine_markdown(machine_info(('jax', 'jaxlib', 'numpy', 'equinox', 'optax')))}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=100_000, help="steps of the single series")
    ap.add_argument("--steps", type=int, default=300, help="Adam steps of the single fit")
    ap.add_argument("--N", type=int, default=16, help="instruments of the batch comparison")
    ap.add_argument("--batch-T", type=int, default=10_000, help="steps per instrument")
    ap.add_argument("--batch-steps", type=int, default=100, help="Adam steps per instrument")
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
