"""The report ``drift-jax fit`` writes next to the fitted config: Markdown and one PNG.

``fitted.md`` holds what a reviewer of a hand-off asks first: where the numbers came from
(files, rows, versions), whether the fit converged, the estimates with their intervals and
the warnings of ``dj.standard_errors``; ``fitted.png`` shows the loss curve, each estimate's
interval relative to the estimate, and the fitted filter's regime probabilities (and drift)
over the history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_fit_report(config_path: Path, start_cfg, res, se, history, losses) -> list[Path]:
    """Write ``<config>.md`` and ``<config>.png`` beside ``config_path``; returns both paths."""
    from .. import __version__
    from .._filters.filter import filter as run_filter

    md_path = config_path.with_suffix(".md")
    png_path = config_path.with_suffix(".png")
    filtered = run_filter(res.model, history.features, history.dt)
    # Regime probabilities are worth a panel only with more than one regime.
    _plot(png_path, res, se, history, losses, filtered, res.model.num_regimes > 1)
    t = se.table
    rows = [
        "| parameter | estimate | std err | 95% interval | identified |",
        "|---|---:|---:|---|:-:|",
    ]
    for name, r in t.iterrows():
        interval = "—" if np.isnan(r.ci_low) else f"[{r.ci_low:.6g}, {r.ci_high:.6g}]"
        se_text = "—" if np.isnan(r.std_err) else f"{r.std_err:.3g}"
        rows.append(
            f"| `{name}` | {r.estimate:.6g} | {se_text} | {interval} | "
            f"{'yes' if r.identified else '**no**'} |"
        )
    warnings = se.summary().split("Warnings:", 1)
    lines = [
        f"# Fit report: `{config_path.name}`",
        "",
        f"- history: `{history.source}`, {history.num_steps} rows over {history.duration:.6g} s;"
        f" {history.first_dt_rule}",
        f"- features (in the model's order): {', '.join(history.feature_names)}",
        f"- returns: {history.returns_source or 'none (feature likelihood only)'}",
        f"- model: {type(res.model).__name__}, {res.model.num_features} feature(s), float64",
        f"- optimiser steps: {int(res.num_steps)}, converged: **{bool(res.converged)}**",
        f"- loss per step: {losses[0]:.8g} -> {losses[-1]:.8g}"
        f" (log-likelihood of the fitted filter {float(filtered.log_likelihood):.10g})",
        f"- drift_jax {__version__}",
        "",
        "## Estimates",
        "",
        *rows,
        "",
        f"Intervals at level {se.level:g}: log scale for positive parameters, logit scale "
        "for probabilities, linear otherwise (see `dj.standard_errors`).",
        "",
    ]
    if len(warnings) == 2:
        lines += ["## Warnings", "", "```", warnings[1].strip(), "```", ""]
    lines += [f"![loss, estimates and regimes]({png_path.name})", ""]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return [md_path, png_path]


def _plot(path, res, se, history, losses, filtered, regimes: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 10), constrained_layout=True)
    ax = axes[0]
    ax.plot(np.arange(losses.size), losses, color="C0")
    ax.set(xlabel="optimiser step", ylabel="loss per time step", title="Fit: loss")
    ax.grid(alpha=0.3)

    ax = axes[1]
    t = se.table[se.table["identified"] & (se.table["estimate"] != 0)]
    y = np.arange(len(t))
    est = t["estimate"].to_numpy()
    lo, hi = t["ci_low"].to_numpy() / est, t["ci_high"].to_numpy() / est
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    ax.hlines(y, lo, hi, color="C1", lw=3)
    ax.plot(np.ones_like(y), y, "k|", ms=12)
    ax.set_yticks(y, list(t.index), fontsize=7)
    ax.axvline(1.0, color="0.6", lw=0.8)
    # Intervals of positive parameters are multiplicative (log scale): a log axis shows a
    # wide one without flattening the rest.
    if len(t) and np.all(lo > 0):
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=0.1)
    ax.set(xlabel="interval / estimate", title=f"{se.level:.0%} intervals relative to estimate")
    ax.grid(alpha=0.3, axis="x")

    ax = axes[2]
    time = history.times
    if regimes:
        probs = np.asarray(filtered.regime_probs)
        ax.stackplot(time, probs.T, labels=list(res.model.regime_names), alpha=0.8)
        ax.set(ylim=(0, 1), ylabel="regime probability")
        ax.legend(loc="upper left", fontsize=8)
        twin = ax.twinx()
        twin.plot(time, np.asarray(filtered.drift), color="k", lw=0.8, label="drift")
        twin.set_ylabel("drift (bps/s)")
    else:
        ax.plot(time, np.asarray(filtered.drift), color="k", lw=0.8)
        ax.set_ylabel("drift (bps/s)")
    ax.set(xlabel="time (s)", title="Fitted filter over the history")
    fig.savefig(path, dpi=110)
    plt.close(fig)
