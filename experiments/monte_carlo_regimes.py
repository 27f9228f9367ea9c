"""Monte Carlo of liquidation cascades: which drift estimator detects and tracks them?

Claim under test (the design note): a single OU Kalman filter (one timescale, theta 0.02)
cannot follow a drift that jumps; an IMM over Quiet / Trending / Crisis can, and it should
see all features in ONE vector update with their full covariance (independent scalar
updates of correlated features make it overconfident); extended ``[mu, mu_dot]`` members
react to a moving drift sooner.

Estimators, all run on the same randomised cascade paths (``dj.scenarios``, default
ranges: level -80..-20 bps/s, start 30..120 s, fall 0.5..3 s, hold 10..60 s, recovery
10..60 s; 4 correlated features; dt = 0.1 s):

- ``ou_single``: one OU Kalman filter (theta 0.02, sigma 1.0), joint update of the 4 features;
- ``imm_scalar``: the seed IMM (3 scalar regimes) fed the first feature only (BIM);
- ``imm_joint``: the seed IMM on the 4 features, one vector update (full R);
- ``imm_independent``: the same on the 4 features as 4 scalar updates (R's correlations ignored);
- ``imm_extended``: the seed IMM with ``[mu, mu_dot]`` members, joint update;
- ``imm_joint_pi_1s``: ``imm_joint`` with the seed transition matrix read as per SECOND
  rather than per cycle: ``Pi_dt = Pi ** dt`` (fractional matrix power), i.e. at 10 Hz
  ten times fewer switches per cycle. The seed matrix is specified per cycle, so at 10 Hz
  it expects a regime switch every ~1-2 s; this variant shows what that costs in false
  alarms.

Writes ``experiments/results/monte_carlo_regimes.{md,csv,npz}`` and PNG plots
(``monte_carlo_latency.png``: distributions of the detection and 90%-tracking latencies;
``monte_carlo_rmse.png``: RMSE by true regime). ``--quick`` runs a small version (the demo).

Usage: ``python experiments/monte_carlo_regimes.py [--paths 10000] [--quick]``
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a script, not the library: float64 on purpose

import numpy as np  # noqa: E402

import drift_jax as dj  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DT = 0.1


def estimators() -> dict:
    alpha, R = dj.scenarios.default_loadings(), dj.scenarios.default_feature_cov()
    joint = dj.scenarios.default_observation("joint")
    independent = dj.scenarios.default_observation("independent")
    bim = dj.Observation.scalar(R[0, 0], loading=alpha[0])
    return {
        "ou_single": dj.KalmanModel(dj.OU(0.02, 1.0), joint, 0.0, 1.0),
        "imm_scalar": (dj.seed_imm(bim), [0]),
        "imm_joint": dj.seed_imm(joint),
        "imm_independent": dj.seed_imm(independent),
        "imm_extended": dj.seed_imm(joint, extended=True),
        "imm_joint_pi_1s": _per_second(dj.seed_imm(joint), DT),
    }


def _per_second(imm, dt: float):
    """The IMM with its transition matrix taken as per second: ``Pi ** dt`` per cycle."""
    import equinox as eqx
    from scipy.linalg import fractional_matrix_power

    Pi = np.real(fractional_matrix_power(np.asarray(imm.transition), dt))
    Pi = np.clip(Pi, 0.0, None)
    Pi /= Pi.sum(axis=1, keepdims=True)
    return eqx.tree_at(lambda m: m.transition, imm, jax.numpy.asarray(Pi))


def plot(report, path_latency: Path, path_rmse: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(report.table.index)
    colors = {name: f"C{i}" for i, name in enumerate(names)}  # one colour per estimator
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    for ax, (key, title) in zip(
        fig.subplots(1, 2),
        (
            ("detection", "P(Crisis) > 0.3 after the cascade starts"),
            ("track90", "estimate reaches 90% of the fall"),
        ),
        strict=True,
    ):
        for name in names:
            lat = report.latencies[name].get(key)
            if lat is None or lat.size == 0:
                continue
            found = np.sort(lat[np.isfinite(lat)])
            if found.size == 0:
                continue
            # Empirical CDF over all episodes: missed ones (inf) keep it below 1.
            ax.step(
                found,
                np.arange(1, found.size + 1) / lat.size,
                where="post",
                label=name,
                color=colors[name],
            )
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("latency (s)")
        ax.set_ylabel("fraction of cascades")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_latency, dpi=110)

    fig = Figure(figsize=(8, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    regimes = ["Quiet", "Trending", "Crisis"]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [report.table.loc[name, f"rmse_{r}"] for r in regimes]
        ax.bar(np.arange(3) + i * width, vals, width, label=name, color=colors[name])
    ax.set_xticks(np.arange(3) + 0.4 - width / 2, regimes)
    ax.set_ylabel("drift RMSE (bps/s)")
    ax.set_yscale("log")
    ax.set_title("Tracking error by true regime (randomised cascades)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path_rmse, dpi=110)


def findings(t) -> str:
    """The claims under test, answered from the table's numbers."""
    r = lambda a, b, col: t.loc[a, col] / t.loc[b, col]
    lines = [
        "## Reading",
        "",
        f"- One timescale cannot follow a cascade: in Crisis the single OU filter's RMSE is "
        f"{r('ou_single', 'imm_joint', 'rmse_Crisis'):.2f}x the joint IMM's, and it needs "
        f"{t.loc['ou_single', 'track90_median_s']:.1f} s (median) to cover 90% of the fall "
        f"vs {t.loc['imm_joint', 'track90_median_s']:.1f} s; its NEES is "
        f"{t.loc['ou_single', 'nees']:.2f} (overconfident).",
        f"- Independent scalar updates of correlated features: NEES "
        f"{t.loc['imm_independent', 'nees']:.2f} vs {t.loc['imm_joint', 'nees']:.2f} joint, "
        f"Quiet RMSE {r('imm_independent', 'imm_joint', 'rmse_Quiet'):.2f}x, false alarms "
        f"{t.loc['imm_independent', 'false_alarms_per_hour']:.0f}/h vs "
        f"{t.loc['imm_joint', 'false_alarms_per_hour']:.0f}/h: it detects sooner "
        f"({t.loc['imm_independent', 'detect_median_s']:.1f} s vs "
        f"{t.loc['imm_joint', 'detect_median_s']:.1f} s) because it over-counts the "
        "evidence, everywhere.",
        f"- Extended [mu, mu_dot] members: 90% tracking "
        f"{t.loc['imm_extended', 'track90_median_s']:.1f} s vs "
        f"{t.loc['imm_joint', 'track90_median_s']:.1f} s (scalar members).",
        f"- The seed transition matrix is per cycle; at 10 Hz that is a switch every 1-2 s, "
        f"hence {t.loc['imm_joint', 'false_alarms_per_hour']:.0f} false alarms per quiet "
        f"hour. Read per second (Pi ** dt) it raises "
        f"{t.loc['imm_joint_pi_1s', 'false_alarms_per_hour']:.0f}/h, detects in "
        f"{t.loc['imm_joint_pi_1s', 'detect_median_s']:.1f} s and has the lowest RMSE "
        f"({t.loc['imm_joint_pi_1s', 'rmse']:.2f}); the alarm rate is still far from "
        "usable: Pi (and the threshold) are what dj.fit should learn.",
        "- loglik_per_step of imm_scalar is over one feature; the others see four.",
    ]
    return "\n".join(lines) + "\n"


def run(n_paths: int, chunk_size: int, out: Path, progress: bool = True):
    ranges = dj.scenarios.randomised("liquidation_cascade")
    sim = dj.scenarios.simulator("liquidation_cascade", 3000, DT, **ranges)
    t0 = time.perf_counter()
    report = dj.monte_carlo(
        estimators(),
        sim,
        key=jax.random.key(2026),
        n_paths=n_paths,
        chunk_size=chunk_size,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / "monte_carlo_regimes")
    plot(report, out / "monte_carlo_latency.png", out / "monte_carlo_rmse.png")
    header = (
        f"# Monte Carlo: {n_paths} randomised liquidation cascades x 3000 steps (dt {DT} s)\n\n"
        f"Ranges: {ranges}. 4 correlated features. {seconds:.0f} s for "
        f"{n_paths * 3000 * len(report.table):.3g} estimator path-steps on "
        f"{platform.processor() or platform.machine()} ({jax.device_count()} device(s)), "
        f"jax {jax.__version__}, drift_jax {dj.__version__}.\n\n"
    )
    md = out / "monte_carlo_regimes.md"
    md.write_text(header + md.read_text() + "\n" + findings(report.table))
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 paths (the demo's size)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = 200 if args.quick else args.paths
    report = run(n, min(args.chunk, n), args.out)
    cols = [
        "rmse",
        "rmse_Crisis",
        "coverage_2sigma",
        "nees",
        "detect_median_s",
        "detect_fraction",
        "track50_median_s",
        "track90_median_s",
        "false_alarms_per_hour",
        "recovery_median_s",
    ]
    print(report.table[cols].to_string(float_format="%.3g"))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
