"""``MarketMakingReport``: what a backtest says about each estimator, as a desk reads it.

Per-path statistics are pooled in float64 on the host, in path order. Standard errors are
over paths (the paths are independent): of a mean, ``std / sqrt(n)``; of a ratio of sums
(PnL per hour, markout per fill), the delta-method error of a ratio estimator.
"""

from __future__ import annotations

import numpy as np

from .._core import multihost

#: Columns of the markdown summary (the csv has every column).
SUMMARY_COLUMNS = (
    "pnl_mean",
    "pnl_se",
    "pnl_p05",
    "pnl_p50",
    "pnl_p95",
    "pnl_per_hour",
    "spread_pnl_mean",
    "inventory_pnl_mean",
    "fills_per_hour",
    "spread_per_fill",
    "markout_1s",
    "markout_5s",
    "markout_30s",
    "max_abs_q_mean",
    "time_at_limit",
    "q_crisis_end_mean",
    "adverse_q_max_crisis",
    "max_drawdown_mean",
)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    se = float(np.std(x, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return float(np.mean(x)), se


def ratio_se(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """``sum(num) / sum(den)`` over paths and its delta-method standard error."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    total = den.sum()
    if total == 0:
        return float("nan"), float("nan")
    r = num.sum() / total
    n = num.size
    if n < 2:
        return float(r), float("nan")
    resid = num - r * den
    se = np.sqrt(n / (n - 1) * np.sum(resid**2)) / total
    return float(r), float(se)


def _fmt_h(h: float) -> str:
    return f"{h:g}s"


def summarise(pp: dict, ev: dict, common: dict, regime_names, horizons, limit: int) -> dict:
    """One table row from one estimator's per-path statistics."""
    hours = common["duration"].astype(np.float64) / 3600.0
    pnl = pp["pnl"].astype(np.float64)
    row: dict = {}
    row["pnl_mean"], row["pnl_se"] = _mean_se(pnl)
    for qn, qv in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
        row[f"pnl_{qn}"] = float(np.quantile(pnl, qv))
    row["pnl_per_hour"], row["pnl_per_hour_se"] = ratio_se(pnl, hours)
    sd = np.std(pnl, ddof=1) if pnl.size > 1 else np.nan
    row["pnl_sharpe_per_path"] = float(np.mean(pnl) / sd) if sd > 0 else float("nan")
    row["score_mean"], row["score_se"] = _mean_se(pp["score"])
    for part in ("spread_pnl", "inventory_pnl", "drift_pnl"):
        row[f"{part}_mean"] = float(np.mean(pp[part].astype(np.float64)))
    reg_h = common["regime_time"].astype(np.float64) / 3600.0
    for j, name in enumerate(regime_names):
        rate, se = ratio_se(pp["pnl_by_regime"][:, j], reg_h[:, j])
        row[f"pnl_per_hour_{name}"] = rate
        row[f"pnl_per_hour_{name}_se"] = se
    fb, fa = pp["fills_bid"].astype(np.float64), pp["fills_ask"].astype(np.float64)
    row["fills_bid_mean"] = float(fb.mean())
    row["fills_ask_mean"] = float(fa.mean())
    row["fills_per_hour"] = ratio_se(fb + fa, hours)[0]
    row["spread_per_fill"] = ratio_se(pp["spread_pnl"], fb + fa)[0]
    for i, h in enumerate(horizons):
        m, se = ratio_se(pp["markout_sum"][:, i], pp["markout_count"][:, i])
        row[f"markout_{_fmt_h(h)}"] = m
        row[f"markout_{_fmt_h(h)}_se"] = se
    maxq = pp["max_abs_q"].astype(np.float64)
    row["max_abs_q_mean"] = float(maxq.mean())
    row["max_abs_q_p95"] = float(np.quantile(maxq, 0.95))
    row["time_at_limit"] = ratio_se(pp["limit_time"], common["duration"])[0]
    for j, name in enumerate(regime_names):
        t = common["regime_time"][:, j]
        row[f"q_mean_{name}"] = ratio_se(pp["q_by_regime"][:, j], t)[0]
        row[f"abs_q_mean_{name}"] = ratio_se(pp["abs_q_by_regime"][:, j], t)[0]
    ends = np.asarray(ev.get("q_crisis_end", np.zeros(0)), np.float64)
    row["crisis_episodes"] = int(ends.size)
    row["q_crisis_end_mean"] = float(ends.mean()) if ends.size else float("nan")
    row["q_crisis_end_abs_mean"] = float(np.abs(ends).mean()) if ends.size else float("nan")
    row["q_crisis_end_at_limit"] = (
        float(np.mean(np.abs(ends) >= limit)) if ends.size else float("nan")
    )
    adverse = pp["adverse_q_max_crisis"].astype(np.float64)
    adverse = adverse[np.isfinite(adverse)]
    row["adverse_q_max_crisis"] = float(adverse.mean()) if adverse.size else float("nan")
    dd = pp["max_drawdown"].astype(np.float64)
    row["max_drawdown_mean"] = float(dd.mean())
    row["max_drawdown_p95"] = float(np.quantile(dd, 0.95))
    return row


class MarketMakingReport:
    """Results of ``dj.market_making.backtest``: one row per estimator.

    Units: PnL in bps of one lot (the mid starts at 0 bps), inventory in lots, time in s.

    Attributes:
        table: ``pandas.DataFrame`` indexed by estimator. PnL per path ``pnl_mean``,
            ``pnl_se``, quantiles ``pnl_p05`` / ``p50`` / ``p95``, ``pnl_per_hour`` (+
            ``_se``), ``pnl_sharpe_per_path``, the score ``score_mean`` (+ ``_se``; PnL
            less ``inventory_penalty * sum q^2 dt``); its parts ``spread_pnl_mean`` (the
            spread captured: ``delta`` of every fill), ``inventory_pnl_mean`` (``sum q r``)
            and its expected part ``drift_pnl_mean`` (``sum q mu dt``, the true drift);
            ``pnl_per_hour_<regime>`` (+ ``_se``) by true regime; fills
            ``fills_bid_mean``, ``fills_ask_mean`` per path, ``fills_per_hour``,
            ``spread_per_fill``; markouts ``markout_<h>s`` (+ ``_se``): the mid's move
            ``h`` seconds after each fill's quote time, signed by the fill's side (+ for a
            buy), bps per fill: negative is adverse selection; inventory ``max_abs_q_mean``,
            ``max_abs_q_p95``, ``time_at_limit`` (fraction of time at ``|q| = Q``),
            ``q_mean_<regime>`` and ``abs_q_mean_<regime>`` (time averages),
            ``crisis_episodes`` and the inventory at the end of each cascade (a run of non-Quiet
            steps with a Crisis step in it: the fall and the hold after it)
            ``q_crisis_end_mean``, ``q_crisis_end_abs_mean``, ``q_crisis_end_at_limit``;
            ``adverse_q_max_crisis``: the largest inventory against the true drift (long
            while it is negative, short while positive) during a path's crisis steps,
            averaged over the paths that have some (lots);
            ``max_drawdown_mean``, ``max_drawdown_p95`` (largest fall of the PnL from its
            running peak, bps).
        per_path: ``{estimator: {statistic: [n_paths] array}}`` (``pnl_by_regime`` and
            the markout sums are ``[n_paths, k]``).
        events: ``{estimator: {"q_crisis_end": array}}``, one entry per crisis episode.
        traces: ``{estimator: {series: [traces, T]}}`` (``q``, ``pnl``, ``delta_bid``,
            ``delta_ask``, ``fill_bid``, ``fill_ask``, ``spread``, ``drift_signal``,
            ``p_crisis_signal``) and ``"paths"``: those paths (``dj.Paths``).
        common: per-path ``duration`` (s) and ``regime_time`` (``[n_paths, M]`` s).
        info: run facts (paths, steps, devices, chunk size, seconds, dtype, settings).
    """

    def __init__(self, table, per_path: dict, events: dict, traces, common: dict, info: dict):
        self.table = table
        self.per_path = per_path
        self.events = events
        self.traces = traces
        self.common = common
        self.info = info

    def __repr__(self) -> str:
        cols = [c for c in SUMMARY_COLUMNS if c in self.table.columns]
        return (
            f"MarketMakingReport({self.info['n_paths']} paths x {self.info['n_steps']} steps)\n"
            f"{self.table[cols].to_string(float_format='%.4g')}"
        )

    def to_markdown(self, columns=None, floatfmt: str = ".4g") -> str:
        """The table (``columns``: default every column) as a markdown table."""
        table = self.table if columns is None else self.table[list(columns)]
        cols = ["estimator", *table.columns]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for name, row in table.iterrows():
            cells = [
                format(x, floatfmt) if isinstance(x, float | np.floating) else str(x) for x in row
            ]
            lines.append("| " + " | ".join([str(name), *cells]) + " |")
        return "\n".join(lines)

    def save(self, path, statistics=None) -> None:
        """Write ``<path>.csv`` (the whole table), ``<path>.md`` (run facts, the summary
        columns, then the whole table) and ``<path>.npz`` (per-path statistics as
        ``<estimator>/<statistic>``, events, and ``common/duration``); ``statistics``
        names the per-path statistics to store (default: all). In a run of several
        processes only process 0 writes (every process holds the same report)."""
        from pathlib import Path

        if not multihost.is_main_process():
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(path.with_suffix(".csv"))
        info = "\n".join(f"- {k}: {v}" for k, v in self.info.items())
        summary = [c for c in SUMMARY_COLUMNS if c in self.table.columns]
        path.with_suffix(".md").write_text(
            f"{info}\n\n{self.to_markdown(summary)}\n\nAll columns:\n\n{self.to_markdown()}\n"
        )
        keep = None if statistics is None else set(statistics)
        flat = {
            f"{e}/{k}": x
            for e, d in self.per_path.items()
            for k, x in d.items()
            if keep is None or k in keep
        }
        flat.update({f"{e}/{k}": x for e, d in self.events.items() for k, x in d.items()})
        flat.update({f"common/{k}": x for k, x in self.common.items()})
        np.savez(path.with_suffix(".npz"), **flat)

    def plot(self, path=None, *, trace: int = 0):
        """A 2x2 figure: PnL per path, markouts by horizon, the inventory and the mid along
        traced path ``trace``, and the inventory at the end of each crisis episode.
        Written to ``path`` when given (Agg backend; no global matplotlib state);
        returns the ``matplotlib.figure.Figure``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names = list(self.table.index)
        fig = Figure(figsize=(12, 8))
        FigureCanvasAgg(fig)
        (ax_pnl, ax_mk), (ax_q, ax_end) = fig.subplots(2, 2)
        ax_pnl.boxplot([self.per_path[n]["pnl"] for n in names], showfliers=False, whis=(5, 95))
        ax_pnl.set_xticks(np.arange(1, len(names) + 1), names, rotation=30, fontsize=8)
        ax_pnl.axhline(0.0, color="k", lw=0.5)
        ax_pnl.set_ylabel("PnL per path (bps x lot)")
        ax_pnl.set_title("PnL per path (box: quartiles, whiskers: 5-95%)", fontsize=10)
        horizons = self.info["markout_horizons_s"]
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            vals = [self.table.loc[n, f"markout_{_fmt_h(h)}"] for h in horizons]
            ax_mk.bar(np.arange(len(horizons)) + i * width, vals, width, label=n)
        ax_mk.set_xticks(np.arange(len(horizons)) + 0.4 - width / 2, [_fmt_h(h) for h in horizons])
        ax_mk.axhline(0.0, color="k", lw=0.5)
        ax_mk.set_ylabel("mid move after a fill, signed (bps)")
        ax_mk.set_title("Markouts (negative: adverse selection)", fontsize=10)
        ax_mk.legend(fontsize=7)
        self.plot_inventory(ax_q, trace=trace)
        ends = [self.events.get(n, {}).get("q_crisis_end", np.zeros(0)) for n in names]
        if any(e.size for e in ends):
            ax_end.boxplot([e if e.size else [np.nan] for e in ends], showfliers=False)
            ax_end.set_xticks(np.arange(1, len(names) + 1), names, rotation=30, fontsize=8)
        ax_end.axhline(0.0, color="k", lw=0.5)
        ax_end.set_ylabel("inventory (lots)")
        ax_end.set_title("Inventory at the end of each crisis episode", fontsize=10)
        fig.tight_layout()
        if path is not None and multihost.is_main_process():
            fig.savefig(path, dpi=110)
        return fig

    def plot_inventory(self, ax=None, *, trace: int = 0):
        """Inventory of every estimator along traced path ``trace``, with the true regimes
        shaded and the mid on a twin axis; returns the axes."""
        if ax is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = Figure(figsize=(10, 4))
            FigureCanvasAgg(fig)
            ax = fig.subplots()
        if not self.traces or self.traces.get("paths") is None:
            raise ValueError("no traced paths: run the backtest with `traces` >= 1.")
        paths = self.traces["paths"]
        if not 0 <= trace < paths.num_paths:
            raise ValueError(
                f"`trace` must be in [0, {paths.num_paths}) (the traced paths), got {trace}."
            )
        t = np.asarray(paths.times[trace])
        reg = np.asarray(paths.regimes[trace])
        if paths.crisis_index >= 0:
            ax.fill_between(
                t,
                0,
                1,
                where=reg == paths.crisis_index,
                color="red",
                alpha=0.1,
                transform=ax.get_xaxis_transform(),
                label="true Crisis",
            )
        for n in self.table.index:
            ax.step(t, np.asarray(self.traces[n]["q"][trace]), where="post", lw=1, label=n)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("inventory (lots)")
        mid = ax.twinx()
        mid.plot(t, np.cumsum(np.asarray(paths.returns[trace])), color="k", lw=0.8, alpha=0.5)
        mid.set_ylabel("mid (bps), black")
        ax.set_title(f"Inventory along traced path {trace}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        return ax
