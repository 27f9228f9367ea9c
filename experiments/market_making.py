"""Market making with the drift estimator in the quoting loop: who takes on inventory in a
cascade, and what does the drift signal cost in quiet markets?

Claim under test (the specification's motivation): during a liquidation cascade a single
OU filter lags and the quotes keep buying into the fall; the IMM reacts within a few
observations, and ``P(Crisis)`` widens the spread through ``sigma_effective``.

Every row quotes with the same GLFT rule (Gueant-Lehalle-Fernandez-Tapia 2013 with
drift: gamma 0.1 /(bps lot), k 0.5 /bps, A 1 fill/s, sigma 1 bps/sqrt(s), inventory
limit 10 lots, quotes never through the mid), fills are Poisson ``A exp(-k delta)`` on
quotes resting while the mid moves (``dj.market_making.FillModel()``), and all rows see
the same paths and the same fill uniforms. Step ``t`` quotes from the estimate after the
features of step ``t-1`` (causal). Rows:

- ``no_signal``: drift 0 (a plain GLFT maker);
- ``ou_single``: one OU Kalman filter (theta 0.02, sigma 1.0), joint update of 4 features;
- ``imm_joint``: the seed IMM on the 4 features, one vector update (full R);
- ``imm_joint_sigma_eff``: the same, quoting with ``sigma_effective = sigma (1 + 3
  P(Crisis))`` (up to 4 bps/sqrt(s), the crisis return volatility of the scenarios);
- ``imm_independent``: the seed IMM with 4 scalar updates (R's correlations ignored: the
  old production behaviour);
- ``imm_extended``: the seed IMM with ``[mu, mu_dot]`` members (``dj.OUAccel``), joint;
- ``oracle``: the true drift with the filters' timing (and P(Crisis) = 1 in a true
  crisis): the bound a perfect estimator reaches.

Paths (``dj.scenarios``, default ranges, 4 correlated features, dt 0.1 s): randomised
liquidation cascades (300 s: level -80..-20 bps/s, start 30..120 s, fall 0.5..3 s, hold
10..60 s, recovery 10..60 s) and randomised reversals (200 s: a trend of 10..40 bps/s
that turns to minus that at 60..140 s within 0.5..5 s). ``--paths N`` runs N of each
kind (the committed results: 10,000 cascades + 10,000 reversals at full length, about
7 minutes on 2 cores).

Writes ``experiments/results/market_making.{md,csv}`` (both tables and the reading),
``market_making_{cascade,reversal}.{md,csv,npz}`` (each report; npz: the per-path PnL,
spread, final and largest inventory, drawdown, and the inventory at each crisis end),
``market_making_cascade.png`` (inventory of every row through one cascade, with the drift
signals) and ``market_making_{cascade,reversal}_report.png`` (PnL, markouts, inventory,
inventory at the end of each crisis).

Usage: ``python experiments/market_making.py [--paths 10000] [--quick] [--out DIR]``
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
import pandas as pd  # noqa: E402

import drift_jax as dj  # noqa: E402

mm = dj.market_making
RESULTS = Path(__file__).resolve().parent / "results"
DT = 0.1
SCENARIOS = {"cascade": ("liquidation_cascade", 3000), "reversal": ("reversal", 2000)}
NPZ_STATS = ("pnl", "spread_pnl", "final_q", "max_abs_q", "max_drawdown")
COLUMNS = [
    "pnl_mean",
    "pnl_se",
    "pnl_p05",
    "pnl_p95",
    "pnl_per_hour_Quiet",
    "pnl_per_hour_Quiet_se",
    "spread_pnl_mean",
    "fills_per_hour",
    "markout_1s",
    "markout_5s",
    "markout_30s",
    "q_crisis_end_mean",
    "adverse_q_max_crisis",
    "time_at_limit",
    "max_drawdown_mean",
]


def strategies():
    base = mm.GLFTStrategy(gamma=0.1, k=0.5, A=1.0, sigma=1.0, inventory_limit=10)
    eff = mm.GLFTStrategy(
        gamma=0.1,
        k=0.5,
        A=1.0,
        sigma=1.0,
        inventory_limit=10,
        volatility="effective",
        crisis_amplifier=3.0,
    )
    return base, eff


def estimators(eff) -> dict:
    joint = dj.scenarios.default_observation("joint")
    independent = dj.scenarios.default_observation("independent")
    imm = dj.seed_imm(joint)
    return {
        "no_signal": mm.NoSignal(),
        "ou_single": dj.KalmanModel(dj.OU(0.02, 1.0), joint, 0.0, 1.0),
        "imm_joint": imm,
        "imm_joint_sigma_eff": mm.Quoter(imm, strategy=eff),
        "imm_independent": dj.seed_imm(independent),
        "imm_extended": dj.seed_imm(joint, extended=True),
        "oracle": mm.Oracle(),
    }


def plot_cascade(report, path: Path) -> None:
    """Inventory of every row through the first cascade, the drift signals and the mid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = report.traces["paths"]
    t = np.asarray(paths.times[0])
    names = list(report.table.index)
    fig = Figure(figsize=(11, 8))
    FigureCanvasAgg(fig)
    ax_q, ax_mu, ax_pnl = fig.subplots(3, 1, sharex=True)
    report.plot_inventory(ax_q, trace=0)
    ax_q.set_title("One randomised cascade: inventory of each row (mid in black)", fontsize=10)
    ax_mu.plot(t, np.asarray(paths.drift[0]), color="k", lw=1.5, label="true drift")
    for i, n in enumerate(names):
        if n in ("no_signal", "oracle", "imm_joint_sigma_eff"):
            continue
        ax_mu.plot(t, report.traces[n]["drift_signal"][0], lw=0.8, color=f"C{i}", label=n)
    ax_mu.set_ylabel("drift signal (bps/s)")
    ax_mu.legend(fontsize=7, ncol=3)
    ax_mu.grid(alpha=0.3)
    for i, n in enumerate(names):
        ax_pnl.plot(t, report.traces[n]["pnl"][0], lw=1, color=f"C{i}", label=n)
    ax_pnl.set_ylabel("PnL (bps x lot)")
    ax_pnl.set_xlabel("time (s)")
    ax_pnl.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def paired(rep, a: str, b: str, regime: int | None = None) -> tuple[float, float]:
    """Mean paired difference a - b (same paths, same fills) and its SE: of the PnL per
    path, or (``regime`` given) of the PnL per hour of that true regime."""
    if regime is None:
        d = rep.per_path[a]["pnl"] - rep.per_path[b]["pnl"]
        return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))
    d = rep.per_path[a]["pnl_by_regime"][:, regime] - rep.per_path[b]["pnl_by_regime"][:, regime]
    h = rep.common["regime_time"][:, regime] / 3600.0
    r = d.sum() / h.sum()
    n = d.size
    return float(r), float(np.sqrt(n / (n - 1) * np.sum((d - r * h) ** 2)) / h.sum())


def verdict(d: float, se: float) -> str:
    """The sign of a paired difference at 2 SE, in words."""
    if abs(d) <= 2.0 * se:
        return "no difference within 2 SE"
    return "the IMM better" if d > 0 else "the OU filter better"


def reading(reports: dict) -> str:
    """What holds and what does not, from the reports' numbers."""
    c, r = reports["cascade"].table, reports["reversal"].table
    rc, rr = reports["cascade"], reports["reversal"]
    d_pnl, se_pnl = paired(rc, "imm_joint", "ou_single")
    d_or, se_or = paired(rc, "oracle", "imm_joint")
    d_q, se_q = paired(rc, "imm_joint", "ou_single", regime=0)
    d_qe, se_qe = paired(rc, "imm_joint_sigma_eff", "imm_joint", regime=0)
    d_qn, se_qn = paired(rc, "imm_joint", "no_signal", regime=0)
    d_rev, se_rev = paired(rr, "imm_joint", "ou_single")
    d_eff, se_eff = paired(rc, "imm_joint_sigma_eff", "imm_joint")
    lines = [
        "## Reading",
        "",
        "Differences between rows are paired (same paths, same fill uniforms): mean and SE "
        "of the per-path difference.",
        "",
        "What holds:",
        "",
        f"- Without a drift signal the maker buys into the fall: it ends a cascade's crisis "
        f"phase at {c.loc['no_signal', 'q_crisis_end_mean']:+.1f} lots on average (worst "
        f"inventory against the drift {c.loc['no_signal', 'adverse_q_max_crisis']:.1f} of "
        f"10), its fills are adversely selected (markout 1 s "
        f"{c.loc['no_signal', 'markout_1s']:+.2f} bps, 30 s "
        f"{c.loc['no_signal', 'markout_30s']:+.1f} bps per fill) and it loses "
        f"{-c.loc['no_signal', 'pnl_mean']:.3g} bps per cascade path "
        f"(SE {c.loc['no_signal', 'pnl_se']:.2g}). Every drift estimator turns that "
        f"round: at the end of the crisis they are short "
        f"({c.loc['ou_single', 'q_crisis_end_mean']:+.1f} OU, "
        f"{c.loc['imm_joint', 'q_crisis_end_mean']:+.1f} IMM joint, "
        f"{c.loc['oracle', 'q_crisis_end_mean']:+.1f} oracle lots), the worst inventory "
        f"they hold against the fall is below a lot "
        f"({c.loc['ou_single', 'adverse_q_max_crisis']:.2f} OU, "
        f"{c.loc['imm_joint', 'adverse_q_max_crisis']:.2f} IMM joint, "
        f"{c.loc['oracle', 'adverse_q_max_crisis']:.2f} oracle) and they earn "
        f"{c.loc['ou_single', 'pnl_mean']:.3g} / {c.loc['imm_joint', 'pnl_mean']:.3g} / "
        f"{c.loc['oracle', 'pnl_mean']:.3g} bps per path.",
        f"- sigma_effective cuts the drawdown in cascades: mean max drawdown "
        f"{c.loc['imm_joint_sigma_eff', 'max_drawdown_mean']:.3g} vs "
        f"{c.loc['imm_joint', 'max_drawdown_mean']:.3g} bps (IMM joint without it); PnL "
        f"per cascade path {d_eff:+.3g} (SE {se_eff:.2g}).",
        "",
        "What does not (or not as claimed):",
        "",
        f"- The IMM does not take on less inventory than the single OU filter in these "
        f"cascades. GLFT's drift skew is mu / (gamma sigma^2) = 10 lots per bps/s here, so "
        f"the OU filter's lagging estimate pulls the bid long before it reaches the true "
        f"level; both end the crisis near the short limit (time at the limit "
        f"{c.loc['ou_single', 'time_at_limit']:.2f} OU vs "
        f"{c.loc['imm_joint', 'time_at_limit']:.2f} IMM). PnL, IMM joint minus OU: "
        f"{d_pnl:+.3g} bps per cascade path (SE {se_pnl:.2g}: {verdict(d_pnl, se_pnl)}); "
        f"in reversals {d_rev:+.3g} (SE {se_rev:.2g}: {verdict(d_rev, se_rev)}); oracle "
        f"minus IMM joint in cascades {d_or:+.3g} (SE {se_or:.2g}). What the lag costs "
        "is small next to what the drift itself pays at the limit.",
        f"- The IMM costs money in quiet markets: per quiet hour of the cascade paths the "
        f"single OU filter earns {c.loc['ou_single', 'pnl_per_hour_Quiet']:.0f} bps, the "
        f"joint IMM {c.loc['imm_joint', 'pnl_per_hour_Quiet']:.0f} (IMM - OU {d_q:+.0f}, "
        f"SE {se_q:.0f}; IMM - no signal {d_qn:+.0f}, SE {se_qn:.0f}), with sigma_effective "
        f"{c.loc['imm_joint_sigma_eff', 'pnl_per_hour_Quiet']:.0f} ({d_qe:+.0f} vs the "
        f"IMM without it, SE {se_qe:.0f}), the independent-update IMM "
        f"{c.loc['imm_independent', 'pnl_per_hour_Quiet']:.0f} (its over-confident "
        f"posterior skews the quotes on noise), no signal "
        f"{c.loc['no_signal', 'pnl_per_hour_Quiet']:.0f} and the oracle "
        f"{c.loc['oracle', 'pnl_per_hour_Quiet']:.0f}. The seed Pi switches regime every "
        "few seconds at 10 Hz (monte_carlo_regimes.md: hundreds of false alarms per quiet "
        "hour), and every false P(Crisis) widens the quotes through sigma_effective.",
        f"- Extended [mu, mu_dot] members change little: cascade PnL "
        f"{c.loc['imm_extended', 'pnl_mean']:.3g} vs {c.loc['imm_joint', 'pnl_mean']:.3g}, "
        f"reversal {r.loc['imm_extended', 'pnl_mean']:.3g} vs "
        f"{r.loc['imm_joint', 'pnl_mean']:.3g} bps per path.",
        f"- In reversals every signal rides the trend at the inventory limit (time at the "
        f"limit {r.loc['imm_joint', 'time_at_limit']:.2f}), still fully long when the "
        f"drift turns (worst inventory against it {r.loc['ou_single', 'adverse_q_max_crisis']:.1f}"
        f" OU, {r.loc['imm_joint', 'adverse_q_max_crisis']:.1f} IMM lots), and the PnL is "
        f"the drift's ({r.loc['imm_joint', 'pnl_mean']:.3g} bps per path, of which spread "
        f"{r.loc['imm_joint', 'spread_pnl_mean']:.2g}): with gamma 0.1 the GLFT rule with "
        "drift is a trend follower capped by the limit, not a market maker; a larger gamma "
        "or a tuned one (dj.market_making.tune) trades the two off.",
        "",
        "Caveats: fills are Poisson on resting quotes (the mid's move within a step moves "
        "the intensity; no queue, no tick size, no fees); PnL is in bps of one lot's "
        "notional with the mid starting at 0; the scenarios' drifts are extreme "
        "(-20..-80 bps/s for tens of seconds).",
    ]
    return "\n".join(lines) + "\n"


def run(n_paths: int, chunk_size: int, out: Path, progress: bool = True) -> dict:
    base, eff = strategies()
    out.mkdir(parents=True, exist_ok=True)
    tables, reports, seconds = {}, {}, {}
    for label, (name, steps) in SCENARIOS.items():
        ranges = dj.scenarios.randomised(name)
        sim = dj.scenarios.simulator(name, steps, DT, **ranges)
        t0 = time.perf_counter()
        rep = mm.backtest(
            estimators(eff),
            sim,
            base,
            key=jax.random.key(2026),
            n_paths=n_paths,
            chunk_size=chunk_size,
            progress=progress,
        )
        seconds[label] = time.perf_counter() - t0
        rep.save(out / f"market_making_{label}", statistics=NPZ_STATS)
        rep.plot(out / f"market_making_{label}_report.png")
        tables[label], reports[label] = rep.table, rep
    plot_cascade(reports["cascade"], out / "market_making_cascade.png")
    both = pd.concat(tables, names=["scenario", "estimator"])
    both.to_csv(out / "market_making.csv")
    total = sum(seconds.values())
    header = (
        f"# Market making: {n_paths} randomised cascades + {n_paths} randomised reversals\n\n"
        f"GLFT quotes with drift (gamma 0.1, k 0.5 /bps, A 1 /s, sigma 1 bps/sqrt(s), limit "
        f"10 lots, floor 0), resting Poisson fills, dt {DT} s, cascades 3000 steps, "
        f"reversals 2000 steps, 7 rows on the same paths and fill draws. {total:.0f} s "
        f"({seconds['cascade']:.0f} + {seconds['reversal']:.0f}) on "
        f"{platform.processor() or platform.machine()} ({jax.device_count()} device(s)), "
        f"jax {jax.__version__}, drift_jax {dj.__version__}. Units: bps of one lot, lots, "
        "seconds; markouts are the mid's move after a fill, signed by its side (negative = "
        "adverse selection).\n\n"
    )
    body = []
    for label in SCENARIOS:
        rep = reports[label]
        body.append(f"## {label.capitalize()}s ({rep.info['n_paths']} paths)\n")
        body.append(rep.to_markdown(COLUMNS) + "\n")
    (out / "market_making.md").write_text(header + "\n".join(body) + "\n" + reading(reports))
    return reports


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=10_000, help="paths per scenario")
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="100 paths per scenario (demo)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = 100 if args.quick else args.paths
    reports = run(n, min(args.chunk, n), args.out)
    for label, rep in reports.items():
        print(f"\n{label}:")
        print(rep.table[COLUMNS[:12]].to_string(float_format="%.3g"))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
