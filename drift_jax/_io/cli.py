"""``drift-jax``: the daily calibration pipeline from the command line.

    drift-jax calibrate HISTORY --price-column P --horizon H -o start.toml
    drift-jax fit HISTORY --config start.toml --price-column P -o fitted.toml
    drift-jax golden fitted.toml HISTORY -o golden.json
    drift-jax filter fitted.toml HISTORY -o filtered.parquet

Each verb is a thin layer over the public API (``dj.calibrate_observation``, ``dj.fit``,
``dj.standard_errors``, ``dj.golden_vectors``, ``dj.filter``) and ``dj.read_history`` for
the file. The command line computes in float64 (it turns JAX's x64 mode on when it runs:
it is a program, not an import). Exit codes: 0 done, 1 a data or config error (the
message names the file, column and row), 2 a usage error (argparse).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import sys
from pathlib import Path

import numpy as np

_EPILOG = (
    "Time stamps come from the time column: dt[k] = t[k] - t[k-1]; the first step's dt is "
    "t[1] - t[0] unless --first-dt is given. Equal timestamps are dt = 0 steps (updates with "
    "no prediction) unless --equal-times says otherwise. NaN (an empty CSV cell) is a "
    "missing feature; other missing-data texts (n/a, NULL, ...) are read as NaN with a "
    "warning naming the rows."
)


class _Failure(Exception):
    """A data or configuration problem: printed as one message, exit code 1."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help(sys.stderr)
        return 2
    import jax

    # Hand-off numbers are float64: the command line is a program and may set this; the
    # library itself never changes JAX's configuration.
    jax.config.update("jax_enable_x64", True)
    from .config import ConfigError
    from .history import HistoryError

    try:
        args.run(args)
    except (_Failure, HistoryError, ConfigError, ValueError, FileNotFoundError) as err:
        print(f"drift-jax {args.verb}: error: {err}", file=sys.stderr)
        return 1
    return 0


# --- the argument parser ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="drift-jax",
        description="Calibrate, fit, filter and hand off drift_jax models from the shell.",
        epilog="Run `drift-jax VERB --help` for each verb.",
    )
    parser.add_argument("--version", action="version", version=f"drift_jax {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name, help_text, run):
        p = verbs.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG)
        p.set_defaults(run=run)
        return p

    def history_options(p, *, returns: bool):
        p.add_argument("--time-column", default="time", help="timestamps (default: time)")
        p.add_argument(
            "--columns",
            nargs="+",
            metavar="COL",
            help="feature columns in the model's order (default: the config's "
            "feature_names, else every other column)",
        )
        p.add_argument(
            "--first-dt", type=_positive_float, metavar="SECONDS", help="the first step's dt"
        )
        p.add_argument(
            "--equal-times",
            choices=("keep", "last", "error"),
            default="keep",
            help="rows stamped as the row before: keep (dt = 0 updates, default), last (keep "
            "the last row of each timestamp) or error",
        )
        if returns:
            g = p.add_mutually_exclusive_group()
            g.add_argument("--returns-column", help="realised returns in bps over each step")
            g.add_argument("--price-column", help="prices; returns are 1e4 (p_k/p_(k-1) - 1)")

    p = verb(
        "calibrate",
        "Estimate the feature loadings and the full noise covariance R from a history and "
        "write a seed 3-regime IMM config with that observation.",
        _calibrate,
    )
    p.add_argument("history", help="a CSV or Parquet file")
    p.add_argument("--time-column", default="time", help="timestamps (default: time)")
    p.add_argument("--price-column", required=True, help="prices for the forward-return proxy")
    p.add_argument(
        "--horizon", required=True, type=_positive_float, help="forward-return horizon (s)"
    )
    p.add_argument("--columns", nargs="+", metavar="COL", help="feature columns (default: all)")
    p.add_argument(
        "--shrinkage",
        default="none",
        help="'none', 'ledoit-wolf' or an intensity in [0, 1] (default: none)",
    )
    p.add_argument("--update", choices=("joint", "independent"), default="joint")
    p.add_argument("--extended", action="store_true", help="[mu, mu_dot] members (OUAccel)")
    p.add_argument("--discretisation", choices=("euler", "exact"), default="euler")
    p.add_argument("--crisis-amplifier", type=float, default=2.0, metavar="A")
    p.add_argument("-o", "--output", required=True, help="the config to write (.toml)")

    p = verb(
        "fit",
        "Fit a config's parameters to a history (dj.fit), with standard errors, a summary "
        "table and a Markdown + PNG report next to the output.",
        _fit,
    )
    p.add_argument("history", help="a CSV or Parquet file")
    p.add_argument("--config", required=True, help="the starting config (.toml)")
    history_options(p, returns=True)
    p.add_argument("--steps", type=_positive_int, default=500, help="optimiser steps (500)")
    p.add_argument(
        "--optimizer", choices=("adam", "lbfgs"), default="adam", help="optax optimiser"
    )
    p.add_argument("--learning-rate", type=_positive_float, default=1e-2, metavar="LR")
    p.add_argument(
        "--return-weight", type=float, default=1.0, help="weight of the return NLL (1.0)"
    )
    p.add_argument("--no-report", action="store_true", help="skip the Markdown/PNG report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, help="the fitted config to write (.toml)")

    p = verb(
        "golden",
        "Write golden vectors (JSON): the model, each step's inputs and the streaming "
        "estimator's outputs, for the production implementation to reproduce.",
        _golden,
    )
    p.add_argument("config", help="the model config (.toml)")
    p.add_argument("history", help="a CSV or Parquet file")
    history_options(p, returns=False)
    p.add_argument("--rows", type=_positive_int, help="only the first ROWS rows")
    p.add_argument("-o", "--output", required=True, help="the golden file to write (.json)")

    p = verb(
        "filter",
        "Filter a history with a config: per-step drift, variance and regime probabilities.",
        _filter,
    )
    p.add_argument("config", help="the model config (.toml)")
    p.add_argument("history", help="a CSV or Parquet file")
    history_options(p, returns=False)
    p.add_argument("-o", "--output", required=True, help="the table to write (.parquet/.csv)")
    return parser


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return x


def _positive_int(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return k


# --- shared pieces ------------------------------------------------------------------------


def _load(path: str):
    from .config import load_config

    if not Path(path).is_file():
        raise _Failure(f"config file {path!r} does not exist.")
    return load_config(path)


def _history_for(cfg, args, *, returns: bool):
    """The history's inputs in the config's feature order (checked against its width)."""
    from .history import read_history

    columns = args.columns if args.columns is not None else cfg.feature_names
    h = read_history(
        args.history,
        time_column=args.time_column,
        columns=None if columns is None else list(columns),
        num_features=cfg.model.num_features,
        returns_column=getattr(args, "returns_column", None) if returns else None,
        price_column=getattr(args, "price_column", None) if returns else None,
        first_dt=args.first_dt,
        equal_times=args.equal_times,
    )
    ignored = f"; columns not used: {list(h.ignored_columns)}" if h.ignored_columns else ""
    print(
        f"{h.source}: {h.num_steps} rows, {h.duration:.6g} s, features "
        f"{list(h.feature_names)}{ignored}; {h.first_dt_rule}; {h.equal_times_rule}."
    )
    return h


def _output(path: str, suffixes: tuple[str, ...]) -> Path:
    out = Path(path)
    if not out.name.lower().endswith(suffixes):
        raise _Failure(f"output {path!r} must end with one of {', '.join(suffixes)}.")
    if not out.parent.exists():
        raise _Failure(f"the folder of the output {path!r} does not exist.")
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _realised_vol(h) -> float:
    """``sqrt(sum r_k^2 / sum dt_k)`` in bps/sqrt(s) over the steps with a return: the
    return volatility with the (small) drift part ignored, the default ``sigma_base``."""
    r, dt = h.returns, h.dt
    seen = ~np.isnan(r)
    if seen.sum() < 2:
        raise _Failure(f"{h.source}: fewer than 2 returns to estimate sigma_base from.")
    total = math.fsum(dt[seen])
    return math.sqrt(math.fsum((r[seen] * r[seen]).tolist()) / total)


# --- the verbs ----------------------------------------------------------------------------


def _calibrate(args) -> None:
    from .. import __version__
    from .._fitting.calibrate import calibrate_observation
    from .._models.presets import seed_imm
    from .._models.risk import RiskModel
    from .config import save_config
    from .history import read_history

    out = _output(args.output, (".toml",))
    shrinkage = _shrinkage(args.shrinkage)
    # The same table read once here for its errors (file, column, row) and the returns.
    h = read_history(
        args.history,
        time_column=args.time_column,
        columns=args.columns,
        price_column=args.price_column,
    )
    try:
        cal = calibrate_observation(
            args.history,
            columns=list(h.feature_names),
            time_column=args.time_column,
            price_column=args.price_column,
            horizon=args.horizon,
            shrinkage=shrinkage,
            update=args.update,
        )
    except ValueError as err:
        raise _Failure(f"{args.history}: {err}") from None
    model = seed_imm(cal.observation, extended=args.extended, discretisation=args.discretisation)
    risk = RiskModel(_realised_vol(h), args.crisis_amplifier)
    meta = {
        "created": _now(),
        "created_by": f"drift-jax calibrate (drift_jax {__version__})",
        "source": str(args.history),
        "rows": h.num_steps,
        "rows_for_cov": cal.n_rows,
        "target": cal.target_name,
        "horizon_s": args.horizon,
        "shrinkage": cal.shrinkage,
        "sigma_base_from": "sqrt(sum r^2 / sum dt) of the price returns",
    }
    save_config(out, model, risk, feature_names=cal.feature_names, metadata=meta)
    with _pandas_wide():
        print(cal.summary().to_string(float_format=lambda x: f"{x:.6g}"))
    corr = np.round(cal.residual_corr, 3).tolist()
    print(f"residual correlation: {corr}")
    print(f"sigma_base = {float(risk.sigma_base):.6g} bps/sqrt(s); regimes: the seed IMM.")
    print(f"wrote {out}")


def _shrinkage(text: str):
    if text == "none":
        return None
    if text == "ledoit-wolf":
        return text
    try:
        return float(text)
    except ValueError:
        raise _Failure(
            f"--shrinkage must be 'none', 'ledoit-wolf' or a number in [0, 1], got {text!r}."
        ) from None


def _fit(args) -> None:
    import optax

    from .. import __version__
    from .._fitting.fit import fit
    from .._fitting.uncertainty import standard_errors
    from .._models.risk import RiskModel
    from .config import save_config

    out = _output(args.output, (".toml",))
    cfg = _load(args.config)
    h = _history_for(cfg, args, returns=True)
    risk = cfg.risk
    if h.returns is not None and risk is None:
        risk = RiskModel(_realised_vol(h))
        print(f"the config has no [risk]: starting from sigma_base = {float(risk.sigma_base):.6g}")
    if args.optimizer == "lbfgs":
        optimizer = optax.lbfgs(learning_rate=None)
    else:
        optimizer = optax.adam(args.learning_rate)
    kw = {"returns": h.returns, "risk": risk if h.returns is not None else None}
    res = fit(
        cfg.model,
        h.features,
        h.dt,
        optimizer=optimizer,
        steps=args.steps,
        return_weight=args.return_weight,
        progress=not args.quiet,
        **kw,
    )
    print("standard errors (Hessian at the fit) ...")
    # The fitted risk rides in `res`; the returns go again, the risk not.
    se = standard_errors(
        res, h.features, h.dt, returns=h.returns, return_weight=args.return_weight
    )
    fitted_risk = res.risk if res.risk is not None else cfg.risk
    losses = np.asarray(res.loss_history, dtype=np.float64)
    losses = losses[~np.isnan(losses)]
    meta = dict(cfg.metadata)
    meta.update(
        {
            "fitted": _now(),
            "fitted_by": f"drift-jax fit (drift_jax {__version__})",
            "fit_source": str(args.history),
            "fit_rows": h.num_steps,
            "fit_optimizer": args.optimizer,
            "fit_steps": int(res.num_steps),
            "fit_converged": bool(res.converged),
            "fit_loss_per_step": float(losses[-1]) if losses.size else float("nan"),
            "fit_returns": h.returns_source or "none",
        }
    )
    names = cfg.feature_names or h.feature_names
    save_config(out, res.model, fitted_risk, feature_names=names, metadata=meta)
    print(se.summary())
    print(
        f"{int(res.num_steps)} steps, converged={bool(res.converged)}, loss per step "
        f"{losses[0]:.6g} -> {losses[-1]:.6g}"
    )
    if not bool(res.converged):
        print("warning: the fit did not converge; raise --steps or try --optimizer lbfgs.")
    print(f"wrote {out}")
    if not args.no_report:
        from .fit_report import write_fit_report

        for path in write_fit_report(out, cfg, res, se, h, losses):
            print(f"wrote {path}")


def _golden(args) -> None:
    from .golden import golden_vectors, save_golden

    out = _output(args.output, (".json",))
    cfg = _load(args.config)
    h = _history_for(cfg, args, returns=False)
    rows = h.num_steps if args.rows is None else min(args.rows, h.num_steps)
    golden = golden_vectors(
        cfg.model,
        h.features[:rows],
        h.dt[:rows],
        risk=cfg.risk,
        times=h.times[:rows],
        feature_names=cfg.feature_names or h.feature_names,
        description=(
            f"drift-jax golden {args.config} {args.history}: {rows} steps; {h.first_dt_rule}."
        ),
        metadata=cfg.metadata or None,
    )
    save_golden(out, golden)
    last = golden["steps"][-1]
    print(
        f"{rows} steps; final drift {last['drift_rate_per_sec']:.6g} bps/s, "
        f"log-likelihood {last['log_likelihood']:.10g}"
    )
    print(f"wrote {out}")


def _filter(args) -> None:
    from .._core.inputs import check_finite
    from .._core.optional import optional_pandas
    from .._filters.filter import filter as run_filter
    from .._models.risk import RiskModel

    pd = optional_pandas()
    out = _output(args.output, (".parquet", ".pq", ".csv"))
    cfg = _load(args.config)
    h = _history_for(cfg, args, returns=False)
    # Step by step, as production runs it (not in chunks: equal only to rounding).
    res = run_filter(cfg.model, h.features, h.dt, method="sequential")
    res = check_finite(res, h.features, h.dt)
    risk = cfg.risk if cfg.risk is not None else RiskModel()
    table = {
        "time": h.times,
        "dt": h.dt,
        "drift": np.asarray(res.drift),
        "drift_var": np.asarray(res.drift_var),
        "drift_std": np.sqrt(np.asarray(res.drift_var)),
    }
    p_crisis = np.asarray(res.p_crisis)  # 0 without a crisis regime (a Kalman model)
    if cfg.model.crisis_index >= 0:  # regime columns for a model with a crisis regime
        probs = np.asarray(res.regime_probs)
        for j, name in enumerate(cfg.model.regime_names):
            table[f"p_{name}"] = probs[:, j]
        table["p_crisis"] = p_crisis
        table["is_crisis"] = p_crisis > risk.threshold
    table["sigma_effective"] = np.asarray(risk.sigma_effective(p_crisis))
    table["log_likelihood_step"] = np.asarray(res.log_likelihoods)
    df = pd.DataFrame(table)
    if out.name.lower().endswith(".csv"):
        df.to_csv(out, index=False, float_format="%.17g")
    else:
        try:
            df.to_parquet(out, index=False)
        except ImportError as err:
            raise _Failure(f"writing Parquet needs pyarrow ({err}); or write a .csv") from None
    print(
        f"log-likelihood {float(res.log_likelihood):.10g}; drift at the end "
        f"{table['drift'][-1]:.6g} bps/s"
    )
    print(f"wrote {out} ({len(df)} rows, columns {list(df.columns)})")


class _pandas_wide:
    def __enter__(self):
        from .._core.optional import optional_pandas

        self._ctx = optional_pandas().option_context("display.width", 120)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
