"""The main job (``make demo``): filter a synthetic liquidation cascade and report.

Run as ``python -m drift_jax.demo [--out-dir DIR] [--steps N] [--seed S]``. It simulates a
quiet drift that falls to about -50 bps/s within 2 s (``dj.scenarios.liquidation_cascade``),
observed through the 4 cross-correlated default features
(``dj.scenarios.default_observation()``), and filters it with

- the scalar OU filter (state ``[mu]``, theta = 0.02, sigma = 1.0: the specification's
  Trending model), and
- the extended filter (state ``[mu, mu_dot]``, ``dj.OUAccel``),

each with the joint vector update and with independent scalar updates; then the
specification's 3-regime IMM (``dj.seed_imm``) against the single OU filter. It prints
tables (RMSE against the true drift, time to reach 50% / 90% of the drop, mean posterior
std, coverage of the +-2 std band, log-likelihood; for the IMM also the crisis alarm's
latency and false-alarm share, and where ``dj.smooth`` places the crisis onset in
hindsight) and writes ``demo_kalman.png`` and ``demo_imm.png``.

The demo is a list of sections (``SECTIONS``); each takes the data and the output folder
and returns a ``SectionReport``.

float64 is switched on in ``main()`` (the demo's choice); importing ``drift_jax`` never
changes JAX's settings.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

import drift_jax as dj

DEFAULT_OUT_DIR = Path("demo_output")
DEFAULT_STEPS = 2000
DT = 0.1  # seconds per step (10 Hz)
CASCADE_START, CASCADE_LEVEL = 60.0, -50.0  # s, bps/s: the scenario's defaults, stated

# The filters' parameters. The scalar model is the specification's Trending member; the
# acceleration parameters of the extended model are a reasonable choice, not a fit.
OU_THETA, OU_SIGMA = 0.02, 1.0
ACCEL_THETA, ACCEL_SIGMA = 0.5, 2.0
INIT_VAR = 1.0


# --- Data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CascadeSeries:
    """One simulated cascade as NumPy arrays; step ``k`` covers ``(t[k] - dt[k], t[k]]``.

    Attributes:
        t: ``[T]`` time in seconds at the end of each step (``t[k] = (k + 1) dt``, the
            scenario's grid), i.e. the time of observation ``features[k]``; the filter's
            prior sits at 0.
        dt: ``[T]`` step lengths in seconds (pass it to ``dj.filter`` as ``dt``).
        drift: ``[T]`` true drift ``mu`` at ``t`` (bps/s).
        features: ``[T, m]`` observed features ``loadings * drift + eps``.
        loadings: ``[m]`` the loadings used.
        cov: ``[m, m]`` the noise covariance ``R`` used.
        cascade_start: time the fall begins (s).
        cascade_level: the level the cascade falls to (bps/s, before the quiet background).
    """

    t: np.ndarray
    dt: np.ndarray
    drift: np.ndarray
    features: np.ndarray
    loadings: np.ndarray
    cov: np.ndarray
    cascade_start: float
    cascade_level: float


def make_data(num_steps: int = DEFAULT_STEPS, seed: int = 0, **options) -> CascadeSeries:
    """The synthetic cascade every section filters: quiet, falls to -50 bps/s at t = 60 s.

    Path 0 of ``dj.scenarios.liquidation_cascade(jax.random.key(seed), 1, num_steps, DT)``
    with its default script (fall over 2 s, hold 40 s, recovery over 30 s) and background
    (quiet OU, theta 0.1, sigma 0.3), seen through the default features
    (``dj.scenarios.default_loadings()``, ``default_feature_cov()``).
    ``options`` go to the scenario (e.g. ``background_sigma=0.0``; not ``level`` or
    ``start``, which the report states).
    """
    loadings, cov = dj.scenarios.default_loadings(), dj.scenarios.default_feature_cov()
    paths = dj.scenarios.liquidation_cascade(
        jax.random.key(seed),
        1,
        num_steps,
        DT,
        level=CASCADE_LEVEL,
        start=CASCADE_START,
        observation=dj.Observation(loadings, cov),
        **options,
    )
    return CascadeSeries(
        t=DT * np.arange(1, num_steps + 1),
        dt=np.asarray(paths.dt[0]),
        drift=np.asarray(paths.drift[0]),
        features=np.asarray(paths.features[0]),
        loadings=loadings,
        cov=cov,
        cascade_start=CASCADE_START,
        cascade_level=CASCADE_LEVEL,
    )


# --- Measuring a filter against the truth --------------------------------------------------


@dataclass(frozen=True)
class FilterRun:
    """One filter's output on the data, as NumPy arrays."""

    name: str
    drift: np.ndarray  # [T] posterior mean of mu (bps/s)
    drift_std: np.ndarray  # [T] posterior std of mu (bps/s)
    log_likelihood: float


@dataclass(frozen=True)
class Row:
    """One line of a section's table."""

    name: str
    rmse: float  # bps/s, over the whole series
    t50: float  # s after the cascade starts until the estimate reaches 50% of the drop
    t90: float  # the same for 90% (nan: never reached)
    mean_std: float  # bps/s, mean posterior std of mu
    coverage: float  # fraction of steps with |estimate - truth| <= 2 std
    log_likelihood: float


def crossing_time(drift: np.ndarray, data: CascadeSeries, fraction: float) -> float:
    """Seconds from the cascade start until ``drift`` first reaches ``fraction`` of the drop.

    The drop is ``data.cascade_level`` (negative); ``nan`` when it is never reached.
    """
    target = fraction * data.cascade_level
    after = data.t >= data.cascade_start
    reached = (drift <= target) if data.cascade_level < 0 else (drift >= target)
    idx = np.flatnonzero(after & reached)
    return float(data.t[idx[0]] - data.cascade_start) if idx.size else math.nan


def run_filter(name: str, model: dj.KalmanModel | dj.IMMModel, data: CascadeSeries) -> FilterRun:
    """Filter the features with ``model`` (``dj.filter``, sequential; any model class)."""
    res = dj.filter(model, data.features, data.dt)
    return FilterRun(
        name,
        np.asarray(res.drift),
        np.sqrt(np.asarray(res.drift_var)),
        float(res.log_likelihood),
    )


def summarise(run: FilterRun, data: CascadeSeries) -> Row:
    """Score a filter run against the true drift."""
    err = run.drift - data.drift
    return Row(
        name=run.name,
        rmse=float(np.sqrt(np.mean(err**2))),
        t50=crossing_time(run.drift, data, 0.5),
        t90=crossing_time(run.drift, data, 0.9),
        mean_std=float(np.mean(run.drift_std)),
        coverage=float(np.mean(np.abs(err) <= 2.0 * run.drift_std)),
        log_likelihood=run.log_likelihood,
    )


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width text table of ``rows``."""
    width = max(len("filter"), *(len(r.name) for r in rows))
    head = (
        f"{'filter':<{width}}  {'RMSE':>7}  {'t50%':>6}  {'t90%':>6}  {'mean std':>8}  "
        f"{'2std cover':>10}  {'log-lik':>11}"
    )
    units = f"{'':<{width}}  {'(bps/s)':>7}  {'(s)':>6}  {'(s)':>6}  {'(bps/s)':>8}"
    lines = [head, units, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:<{width}}  {r.rmse:7.2f}  {_num(r.t50, 6)}  {_num(r.t90, 6)}  "
            f"{r.mean_std:8.2f}  {r.coverage:10.2f}  {r.log_likelihood:11.1f}"
        )
    return "\n".join(lines)


def _num(x: float, width: int) -> str:
    return f"{'never':>{width}}" if math.isnan(x) else f"{x:{width}.2f}"


# --- Sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionReport:
    """What a section hands back: a title, its table rows (and text) and its figure."""

    title: str
    rows: tuple[Row, ...]
    table: str
    figure: Path | None


def single_filter_models(data: CascadeSeries) -> dict[str, dj.KalmanModel]:
    """Scalar OU and extended ``[mu, mu_dot]`` models, each with joint / independent updates."""
    dynamics = {
        "OU [mu]": dj.OU(OU_THETA, OU_SIGMA),
        "OUAccel [mu, mu_dot]": dj.OUAccel(OU_THETA, OU_SIGMA, ACCEL_THETA, ACCEL_SIGMA),
    }
    return {
        f"{label} {update}": dj.KalmanModel(
            dyn,
            dj.Observation(data.loadings, data.cov, update=update),
            init_mean=0.0,
            init_cov=INIT_VAR,
        )
        for label, dyn in dynamics.items()
        for update in ("joint", "independent")
    }


def section_single_filters(data: CascadeSeries, out_dir: Path) -> SectionReport:
    """Scalar OU vs extended-state filter, joint vs independent feature updates."""
    runs = [run_filter(name, model, data) for name, model in single_filter_models(data).items()]
    rows = tuple(summarise(run, data) for run in runs)
    figure = out_dir / "demo_kalman.png"
    plot_single_filters(data, runs, figure)
    return SectionReport(
        title=(
            f"Single filters (theta={OU_THETA}, sigma={OU_SIGMA}; OUAccel theta_accel="
            f"{ACCEL_THETA}, sigma_accel={ACCEL_SIGMA}): joint vs independent updates"
        ),
        rows=rows,
        table=format_table(rows),
        figure=figure,
    )


# --- IMM vs single filter ------------------------------------------------------------------

CRISIS_THRESHOLD = 0.3
CRISIS_AMPLIFIER = 2.0


def imm_models(data: CascadeSeries) -> dict[str, dj.KalmanModel | dj.IMMModel]:
    """The specification's 3-regime IMM ([mu] and [mu, mu_dot] members) and the single
    OU filter it replaces, all with the joint update on the same 4 features."""
    obs = dj.Observation(data.loadings, data.cov, update="joint")
    return {
        "IMM [mu] (seed_imm)": dj.seed_imm(obs, init_cov=INIT_VAR),
        "IMM [mu, mu_dot]": dj.seed_imm(
            obs, extended=True, theta_accel=ACCEL_THETA, sigma_accel=ACCEL_SIGMA, init_cov=INIT_VAR
        ),
        "single OU [mu] theta=0.02": dj.KalmanModel(
            dj.OU(OU_THETA, OU_SIGMA), obs, init_mean=0.0, init_cov=INIT_VAR
        ),
    }


def crisis_alarm(p_crisis: np.ndarray, data: CascadeSeries) -> tuple[float, float]:
    """(seconds from the cascade start until P(Crisis) > threshold, share of pre-cascade
    steps with P(Crisis) > threshold, i.e. false alarms)."""
    alarm = p_crisis > CRISIS_THRESHOLD
    after = data.t >= data.cascade_start
    idx = np.flatnonzero(after & alarm)
    latency = float(data.t[idx[0]] - data.cascade_start) if idx.size else math.nan
    before = data.t < data.cascade_start - 1.0
    return latency, float(np.mean(alarm[before]))


def crisis_onset(p_crisis: np.ndarray, data: CascadeSeries, level: float = 0.5) -> float:
    """The first time (s) from 5 s before the cascade start on at which ``P(Crisis)``
    exceeds ``level``: where a filter (or, in hindsight, the smoother) places the onset."""
    idx = np.flatnonzero((data.t >= data.cascade_start - 5.0) & (p_crisis > level))
    return float(data.t[idx[0]]) if idx.size else math.nan


def section_imm(data: CascadeSeries, out_dir: Path) -> SectionReport:
    """IMM (Quiet / Trending / Crisis) against the single OU filter on the cascade."""
    results = {
        name: dj.filter(model, data.features, data.dt) for name, model in imm_models(data).items()
    }
    runs = [
        FilterRun(
            name, np.asarray(r.drift), np.sqrt(np.asarray(r.drift_var)), float(r.log_likelihood)
        )
        for name, r in results.items()
    ]
    rows = tuple(summarise(run, data) for run in runs)
    lines = [format_table(rows), ""]
    for name, r in results.items():
        if isinstance(r, dj.IMMResult):
            latency, false_alarms = crisis_alarm(np.asarray(r.p_crisis), data)
            lines.append(
                f"{name}: P(Crisis) > {CRISIS_THRESHOLD} after {_num(latency, 0)} s; "
                f"before the cascade above it on {100 * false_alarms:.1f}% of steps"
            )
    # In hindsight (dj.smooth, Kim's smoother): where the crisis started, from all the data.
    name = "IMM [mu] (seed_imm)"
    smoothed = dj.smooth(imm_models(data)[name], data.features, data.dt)
    onset_f = crisis_onset(np.asarray(smoothed.filtered.p_crisis), data)
    onset_s = crisis_onset(np.asarray(smoothed.p_crisis), data)
    lines.append(
        f"{name} in hindsight (dj.smooth): P(Crisis) > 0.5 from t = {_num(onset_s, 0)} s "
        f"(filtered: {_num(onset_f, 0)} s; the fall starts at {data.cascade_start:g} s)"
    )
    lines += bad_tick_lines(imm_models(data)[name], data)
    figure = out_dir / "demo_imm.png"
    plot_imm(data, runs, results, figure, smoothed_p_crisis=np.asarray(smoothed.p_crisis))
    return SectionReport(
        title="IMM (seed_imm: Quiet / Trending / Crisis) vs the single OU filter, joint update",
        rows=rows,
        table="\n".join(lines),
        figure=figure,
    )


def bad_tick_lines(imm: dj.IMMModel, data: CascadeSeries, at: float = 30.0) -> list[str]:
    """One bad tick (feature 0 reads 1000 bps/s at ``at`` s, in the quiet part), filtered
    with the Gaussian update and with ``dj.StudentT(df=4)`` (``Observation(robust=...)``):
    the drift and P(Crisis) at the tick, and the cascade's alarm time with the robust one."""
    k = int(round(at / DT)) - 1
    bad = data.features.copy()
    bad[k, 0] = 1000.0
    lines = []
    for label, robust in (("Gaussian", None), ("robust dj.StudentT(df=4)", dj.StudentT(4.0))):
        model = eqx.tree_at(lambda m: m.observation, imm, imm.observation.with_robust(robust))
        r = dj.filter(model, bad, data.dt)
        latency, _ = crisis_alarm(np.asarray(r.p_crisis), data)
        lines.append(
            f"one bad tick (1000 bps/s at t = {at:g} s), {label}: drift "
            f"{float(r.drift[k]):+.1f} bps/s (truth {data.drift[k]:+.1f}), P(Crisis) "
            f"{float(r.p_crisis[k]):.2f}; cascade alarm after {_num(latency, 0)} s"
        )
    return lines


def plot_imm(
    data: CascadeSeries,
    runs: Sequence[FilterRun],
    results: dict,
    path: Path,
    smoothed_p_crisis: np.ndarray | None = None,
) -> None:
    """Drift estimates, regime probabilities (and, if given, the smoothed P(Crisis)) and
    sigma_effective through the cascade."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 10), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": (3, 2, 1.3)})
    t = data.t
    ax = axes[0]
    ax.plot(t, data.drift, color="black", lw=1.5, label="true drift")
    for run, color in zip(runs, ("tab:red", "tab:purple", "tab:blue"), strict=True):
        lo, hi = run.drift - 2 * run.drift_std, run.drift + 2 * run.drift_std
        ax.fill_between(t, lo, hi, color=color, alpha=0.15, lw=0)
        ax.plot(t, run.drift, color=color, lw=1.0, label=f"{run.name} +-2 std")
    ax.set_ylim(data.cascade_level * 1.5, -data.cascade_level * 0.5)
    ax.set_ylabel("drift (bps/s)")
    ax.set_title("drift: IMM vs the single OU filter")
    ax.legend(loc="lower left", fontsize=8)
    imm = next(r for r in results.values() if isinstance(r, dj.IMMResult))
    probs = np.asarray(imm.regime_probs)
    ax = axes[1]
    # Crisis at the bottom of the stack, so the threshold line reads P(Crisis) directly.
    names = dj.seed_imm().regime_names
    ax.stackplot(t, probs.T[::-1], labels=names[::-1], alpha=0.8,
                 colors=("tab:red", "tab:orange", "tab:green"))  # fmt: skip
    ax.axhline(CRISIS_THRESHOLD, color="black", ls="--", lw=0.8, label="crisis threshold")
    if smoothed_p_crisis is not None:
        label = "P(Crisis) in hindsight (dj.smooth)"
        ax.plot(t, smoothed_p_crisis, color="black", lw=1.2, label=label)
    ax.set_ylim(0, 1)
    ax.set_ylabel("regime probability")
    ax.set_title("IMM [mu] regime probabilities (stacked, Crisis at the bottom)")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    ax.plot(t, np.asarray(imm.sigma_effective(1.0, CRISIS_AMPLIFIER)), color="tab:red")
    ax.set_ylabel("sigma_eff / sigma")
    ax.set_title(f"sigma_effective = sigma (1 + {CRISIS_AMPLIFIER} P(Crisis))")
    ax.set_xlabel("time (s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


SECTIONS: tuple[Callable[[CascadeSeries, Path], SectionReport], ...] = (
    section_single_filters,
    section_imm,
)


# --- Plot ----------------------------------------------------------------------------------


def plot_single_filters(data: CascadeSeries, runs: Sequence[FilterRun], path: Path) -> None:
    """True drift, estimates with +-2 std bands and the features (scaled by 1/loading).

    Left column: the whole series; right: the first seconds of the cascade. Bottom row:
    the posterior std over time, and the error in units of the posterior std at the onset.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 10), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 2, sharex="col", gridspec_kw={"width_ratios": (2, 1)})
    t = data.t
    zoom = (t >= data.cascade_start - 5.0) & (t <= data.cascade_start + 20.0)
    scaled = data.features / data.loadings[None, :]
    colors = {"joint": "tab:blue", "independent": "tab:orange"}
    groups = (("OU [mu]", "scalar OU filter [mu]"), ("OUAccel", "extended filter [mu, mu_dot]"))
    for row, (prefix, title) in enumerate(groups):
        for col, mask in enumerate((np.ones_like(zoom), zoom)):
            ax = axes[row, col]
            for k in range(scaled.shape[1]):
                label = "features / loading" if k == 0 else None
                ax.plot(t[mask], scaled[mask, k], lw=0.4, alpha=0.15, color="grey", label=label)
            ax.plot(t[mask], data.drift[mask], color="black", lw=1.5, label="true drift")
            for run in runs:
                if not run.name.startswith(prefix):
                    continue
                update = run.name.split()[-1]
                c = colors[update]
                lo = run.drift - 2.0 * run.drift_std
                hi = run.drift + 2.0 * run.drift_std
                ax.fill_between(t[mask], lo[mask], hi[mask], color=c, alpha=0.25, lw=0)
                ax.plot(t[mask], run.drift[mask], color=c, lw=1.0, label=f"{update} +-2 std")
            ax.set_ylim(data.cascade_level * 1.5, -data.cascade_level * 0.5)
            ax.set_ylabel("drift (bps/s)")
            ax.set_title(title + (" (cascade onset)" if col else ""))
            if row == 0 and col == 0:
                ax.legend(loc="lower left", fontsize=8)
    ax = axes[2, 0]
    for run in runs:
        style = "-" if run.name.startswith("OU [mu]") else "--"
        ax.plot(t, run.drift_std, style, color=colors[run.name.split()[-1]], label=run.name)
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("posterior std of mu (bps/s)")
    ax.set_title("posterior std of mu (independent updates ignore the correlation)")
    ax.legend(fontsize=8)
    ax = axes[2, 1]
    for run in runs:
        style = "-" if run.name.startswith("OU [mu]") else "--"
        z = (run.drift - data.drift) / run.drift_std
        ax.plot(t[zoom], z[zoom], style, color=colors[run.name.split()[-1]], lw=1.0)
    ax.axhspan(-2.0, 2.0, color="grey", alpha=0.15, lw=0)
    ax.set_ylabel("(estimate - truth) / std")
    ax.set_title("normalised error at the onset (grey: +-2)")
    for ax in axes[2]:
        ax.set_xlabel("time (s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# --- Entry point ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoReport:
    """Everything the demo printed, for tests and notebooks."""

    data: CascadeSeries
    sections: tuple[SectionReport, ...]
    seconds: float


def main(
    out_dir: str | Path = DEFAULT_OUT_DIR,
    num_steps: int = DEFAULT_STEPS,
    seed: int = 0,
    *,
    verbose: bool = True,
) -> DemoReport:
    """Run every section on one synthetic cascade, print the tables, write the figures.

    Arguments:
        out_dir: folder for the figures (created if missing).
        num_steps: length of the synthetic series (steps of 0.1 s; the cascade starts at
            60 s, so use at least ~700).
        seed: seed of the synthetic series.
        verbose: print the report.

    Returns:
        A ``DemoReport`` with the data and each section's rows, table and figure path.
    """
    # The demo's own choice; the library never switches x64 on by itself.
    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(num_steps, seed)
    say = print if verbose else (lambda *a, **k: None)
    say(
        f"drift_jax demo: synthetic liquidation cascade, T={num_steps} steps of {DT} s, "
        f"{data.features.shape[1]} correlated features, seed {seed}"
    )
    say(
        f"true drift: falls to {data.cascade_level:g} bps/s from t={data.cascade_start:g} s; "
        f"it reaches 50% of the drop after {_num(crossing_time(data.drift, data, 0.5), 0)} s "
        f"and 90% after {_num(crossing_time(data.drift, data, 0.9), 0)} s"
    )
    sections = []
    for i, section in enumerate(SECTIONS, start=1):
        report = section(data, out)
        sections.append(report)
        say(f"\n[{i}] {report.title}")
        say(report.table)
        if report.figure is not None:
            say(f"plot: {report.figure}")
    seconds = time.perf_counter() - start
    say(f"\ndone in {seconds:.1f} s")
    return DemoReport(data, tuple(sections), seconds)


def _cli(argv: Sequence[str] | None = None) -> DemoReport:
    parser = argparse.ArgumentParser(
        prog="python -m drift_jax.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help="folder for figures")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps of 0.1 s")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic series")
    args = parser.parse_args(argv)
    return main(args.out_dir, args.steps, args.seed)


if __name__ == "__main__":
    _cli()
