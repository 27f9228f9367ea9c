"""The data of an offline calibration: arrays, a DataFrame or a timestamped CSV / Parquet file.

Also the drift proxy most calibrations use, the realised forward return (``realised_drift``).
Rows are counted from 0 in messages (the header of a file excluded). NaN is missing data;
inf is an error.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from jaxtyping import Real

from .._core import validate as v
from .._core.optional import optional_pandas
from .._core.types import ArrayLike, Float
from .._core.validate import DataWarning

pd = optional_pandas()

__all__ = ["check_values", "load_calibration_data", "read_table", "realised_drift"]

_CSV = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip")
_PARQUET = (".parquet", ".pq")


def check_values(label: str, x: np.ndarray, *, allow_nan: bool = True, names=None) -> None:
    """Raise a ``ValueError`` naming the first row (and column) of ``x`` that is inf (or NaN)."""
    bad = np.isinf(x) if allow_nan else ~np.isfinite(x)
    if not np.any(bad):
        return
    idx = np.argwhere(bad)[0]
    where = f"row {idx[0]}"
    if x.ndim == 2:
        where += f", column {idx[1]}" + ("" if names is None else f" ({names[idx[1]]!r})")
    allowed = "finite or NaN (NaN marks missing data; inf is an error)" if allow_nan else "finite"
    raise ValueError(f"{label} must be {allowed}; got {float(x[tuple(idx)])!r} at {where}.")


def realised_drift(
    times: Real[ArrayLike, " T"] | list | tuple | pd.Series,
    prices: Real[ArrayLike, " T"] | list | tuple | pd.Series,
    horizon: float | int,
    *,
    per: str = "elapsed",
) -> Float[np.ndarray, " T"]:
    """The realised forward return over ``horizon`` seconds, in bps/s: a drift proxy.

    ``y(t) = 1e4 * (p(t') / p(t) - 1) / (t' - t)`` where ``p(t')`` is the price as of
    ``t + h``: the last observed price stamped at ``t' <= t + h`` (a stamp within a few
    float ulps of ``t + h`` counts as at it). On event-time data (ticks at random times)
    ``t' - t`` is shorter than ``h`` (about ``h - 1/rate`` at ``rate`` events per second),
    so the return is divided by the time it covers, ``t' - t``: it is then the average
    drift over ``[t, t']`` plus noise, whose only bias is the errors-in-variables
    attenuation ``dj.calibrate_observation`` documents. (``per="horizon"`` divides by ``h``,
    as earlier versions did: on event-time data that shrinks the proxy by ``E[t' - t] / h``
    and inflates the calibrated loadings by about its inverse, +10% at ``h = 1`` s and 5
    events/s.) ``y(t)`` uses prices after ``t`` on purpose — it is the target the features
    at ``t`` are calibrated to predict, never a filter input. It is NaN when ``p(t)`` is
    missing, when no price is observed in ``(t, t + h]``, or when ``t + h`` is after the
    last timestamp (the future is not in the data).

    Choosing the horizon. The proxy is ``y = mu_avg + nu``: ``mu_avg``, the drift averaged
    over ``[t, t']``, and the price noise ``nu``, of variance about ``vol^2 / h`` (bps/s)^2
    for a return volatility ``vol`` in bps/sqrt(s), plus ``2 sigma_tick^2 / h^2`` for
    microstructure noise of ``sigma_tick`` bps per price. The loadings are attenuated by
    ``lambda = var(mu) / (var(mu) + var(nu))``, so ``h`` should be (1) long enough that
    ``var(nu)`` is small against the drift's variance, (2) short against the drift's
    half-life (``mu_avg`` stays close to ``mu(t)``) and (3) several mean gaps between events
    (so ``t' - t`` is close to ``h`` and few rows are NaN). In practice: calibrate at a few
    horizons (0.5, 1, 2, 5 s ...) and take the one where the loadings stop rising with
    ``h`` (the attenuation has gone) before they fall (the averaging sets in).

    Arguments:
        times: ``[T]`` timestamps in seconds, finite and strictly increasing.
        prices: ``[T]`` prices ``> 0``; NaN is missing.
        horizon: ``h`` in seconds, ``> 0``.
        per: ``"elapsed"`` (default: divide by ``t' - t``) or ``"horizon"`` (divide by
            ``h``).

    Returns:
        ``[T]`` float64, bps/s.

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> y = dj.realised_drift([0.0, 1.0, 2.0, 3.0], [100.0, 101.0, 102.0, 101.0], 2.0)
        >>> np.round(y, 6).tolist()
        [100.0, 0.0, nan, nan]
    """
    t = np.asarray(times, dtype=np.float64)
    p = np.asarray(prices, dtype=np.float64)
    if t.ndim != 1 or p.shape != t.shape:
        raise ValueError(
            f"`times` and `prices` must be vectors of one length [T], got shapes {t.shape} "
            f"and {p.shape}."
        )
    check_values("`times`", t, allow_nan=False)
    check_increasing("`times`", t, t)
    check_values("`prices`", p)
    if np.any(p <= 0):
        k = int(np.flatnonzero(p <= 0)[0])
        raise ValueError(
            f"`prices` must be > 0 (or NaN, missing); got {float(p[k])!r} at row {k}."
        )
    h = _positive_seconds(horizon)
    v.one_of("per", per, ("elapsed", "horizon"))
    out = np.full(t.shape, np.nan)
    seen = np.flatnonzero(~np.isnan(p))
    if t.size == 0 or seen.size == 0:
        return out
    tol = 8.0 * np.spacing(max(float(np.max(np.abs(t))), h))
    pos = np.searchsorted(t[seen], t + h + tol, side="right") - 1
    j = np.where(pos >= 0, seen[np.maximum(pos, 0)], -1)  # row of p(t + h)
    ok = ~np.isnan(p) & (j > np.arange(t.size)) & (t + h <= t[-1] + tol)
    span = t[j[ok]] - t[ok] if per == "elapsed" else h
    out[ok] = 1e4 * (p[j[ok]] / p[ok] - 1.0) / span
    return out


def _positive_seconds(horizon) -> float:
    return v.positive_float("horizon", horizon, "a number of seconds > 0")


def check_increasing(label: str, t: np.ndarray, shown, *, strict: bool = True, hint="") -> None:
    """Raise naming the first row whose timestamp is not after the previous one
    (``strict=False``: the first one before it; equal timestamps are then allowed, README,
    "Equal timestamps"); ``hint`` ends the strict message."""
    if strict:
        bad = np.flatnonzero(~(np.diff(t) > 0))
        if bad.size:
            k = int(bad[0]) + 1
            raise ValueError(
                f"timestamps in {label} must be strictly increasing; row {k} "
                f"({_show(shown[k])}) is not after row {k - 1} ({_show(shown[k - 1])}) (rows "
                f"counted from 0, header excluded){hint}."
            )
        return
    bad = np.flatnonzero(~(np.diff(t) >= 0))
    if bad.size:
        k = int(bad[0]) + 1
        raise ValueError(
            f"timestamps in {label} must not decrease (equal timestamps are allowed); row {k} "
            f"({_show(shown[k])}) is before row {k - 1} ({_show(shown[k - 1])}) (rows "
            "counted from 0, header excluded)."
        )


def _show(value) -> str:
    if isinstance(value, int | float | np.integer | np.floating):
        return repr(float(value))
    return str(pd.Timestamp(value)) if isinstance(value, np.datetime64) else str(value)


def read_table(path) -> pd.DataFrame:
    """Read a ``.csv`` (floats read back exactly) or ``.parquet`` file into a DataFrame."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(_CSV + _PARQUET):
        raise ValueError(
            f"`features` file {str(path)!r} must be a CSV ({', '.join(_CSV)}) or Parquet "
            f"({', '.join(_PARQUET)}) file."
        )
    if not path.is_file():
        raise FileNotFoundError(f"`features` file {str(path)!r} does not exist.")
    if name.endswith(_PARQUET):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(
                f"reading the Parquet file {str(path)!r} needs pyarrow: "
                "pip install drift_jax[parquet]"
            ) from None
        return pd.read_parquet(path, engine="pyarrow")
    # Floats must read back exactly; pandas >= 3 does so by default (and deprecates the flag).
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    try:
        # Only an empty cell is missing as read; text markers ("n/a", "NULL", ...) are
        # turned into NaN below, with a warning that says where.
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], **exact)
    except (ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"could not read the CSV file {str(path)!r}: {err}") from err
    return _missing_markers(df, str(path))


#: Cell texts pandas reads as missing by default (an empty cell is the documented marker).
NA_MARKERS = frozenset(
    "#N/A,#N/A N/A,#NA,-1.#IND,-1.#QNAN,-NaN,-nan,1.#IND,1.#QNAN,<NA>,N/A,NA,NULL,NaN,None,"
    "n/a,nan,null".split(",")
)


def _missing_markers(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Cells holding a missing-data marker (``NA_MARKERS``) become NaN, and their columns
    numeric when every other cell is a number (parsed exactly, by ``float``); a
    ``dj.DataWarning`` says how many cells, in which columns and rows."""
    found = []
    for col in df.columns:
        s = df[col]
        if not (s.dtype == object or pd.api.types.is_string_dtype(s)):
            continue
        marker = s.map(lambda x: isinstance(x, str) and x.strip() in NA_MARKERS).to_numpy(bool)
        if not marker.any():
            continue
        rows = np.flatnonzero(marker)
        texts = sorted({str(x).strip() for x in s[marker]})
        s = s.astype(object).mask(marker, np.nan)
        try:
            s = s.map(lambda x: x if isinstance(x, float) else float(x)).astype(np.float64)
        except (TypeError, ValueError):
            pass  # not a numeric column (e.g. datetimes as text): NaN where the marker was
        df[col] = s
        shown = rows[:10].tolist()
        more = f" and {rows.size - 10} more" if rows.size > 10 else ""
        found.append(f"column {col!r}: {rows.size} cell(s) {texts} at rows {shown}{more}")
    if found:
        warnings.warn(
            DataWarning(
                f"{source}: cells holding a missing-data marker were read as missing (NaN): "
                + "; ".join(found)
                + " (rows counted from 0, header excluded)."
            ),
            stacklevel=3,
        )
    return df


def load_calibration_data(
    features, target, columns, target_column, time_column, price_column, horizon
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    """``(Z [T, m], y [T], feature names, target name)`` from the calibration's inputs."""
    if isinstance(features, str | os.PathLike):
        features = read_table(features)
    if isinstance(features, pd.DataFrame):
        return _from_table(
            features, target, columns, target_column, time_column, price_column, horizon
        )
    for name, value in (
        ("target_column", target_column),
        ("time_column", time_column),
        ("price_column", price_column),
        ("horizon", horizon),
    ):
        if value is not None:
            raise ValueError(
                f"`{name}` is for a table (a DataFrame or a CSV / Parquet file); with an "
                f"array of features pass `target` (see dj.realised_drift), got {name}={value!r}."
            )
    Z = _float_array("features", features)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2 or Z.shape[1] == 0:
        raise ValueError(f"`features` must have shape [T, m] (or [T]), got shape {Z.shape}.")
    m = Z.shape[1]
    names = tuple(f"feature{k}" for k in range(m)) if columns is None else _names(columns)
    if len(names) != m:
        raise ValueError(
            f"`columns` must name the {m} columns of `features`, got {len(names)}: {names}."
        )
    check_values("`features`", Z, names=names)
    if target is None:
        raise ValueError(
            "`target` (the drift proxy, [T]) is needed with an array of features; "
            "dj.realised_drift(times, prices, horizon) builds the forward return."
        )
    return Z, _target(target, Z.shape[0]), names, "target"


def _from_table(df, target, columns, target_column, time_column, price_column, horizon):
    if price_column is not None:
        if target is not None or target_column is not None:
            raise ValueError(
                "give one drift proxy: `target`, `target_column` or `price_column` (with "
                f"`horizon`), got price_column={price_column!r} and a target too."
            )
        if time_column is None:
            raise ValueError(
                f"`price_column` ({price_column!r}) needs `time_column`: the forward return "
                "over `horizon` seconds is found from the timestamps."
            )
        h = _positive_seconds(horizon)
    elif horizon is not None:
        raise ValueError(f"`horizon` ({horizon!r}) is only used with `price_column`.")
    if target is not None and target_column is not None:
        raise ValueError(
            f"give `target` or `target_column`, not both (target_column={target_column!r})."
        )
    special = [c for c in (time_column, target_column, price_column) if c is not None]
    wanted = special if columns is None else _names_raw(columns) + special
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ValueError(
            f"column(s) {missing} not in the table; available columns: {list(df.columns)}."
        )
    if columns is None:
        cols = [c for c in df.columns if c not in special]
        if not cols:
            raise ValueError(
                f"the table has no feature columns besides {special}; pass `columns`."
            )
    else:
        cols = _names_raw(columns)
    names = tuple(str(c) for c in cols)
    Z = np.column_stack([_numeric(df, c, "feature") for c in cols])
    t = None
    if time_column is not None:
        t = _seconds(df[time_column], time_column)
        hint = (
            "; the calibration takes one row per timestamp: aggregate equal timestamps "
            f"first (e.g. keep the last: df.groupby({time_column!r}, as_index=False).last())"
        )
        check_increasing(f"column {time_column!r}", t, df[time_column].to_numpy(), hint=hint)
    if target_column is not None:
        return Z, _numeric(df, target_column, "target"), names, str(target_column)
    if price_column is not None:
        prices = _numeric(df, price_column, "price")
        name = f"realised_drift({price_column!r}, horizon={h:g} s)"
        return Z, realised_drift(t, prices, h), names, name
    if target is None:
        raise ValueError(
            "no drift proxy: pass `target` ([T]), `target_column`, or `price_column` with "
            f"`time_column` and `horizon`; table columns: {list(df.columns)}."
        )
    return Z, _target(target, len(df)), names, "target"


def _names_raw(columns) -> list:
    return [columns] if isinstance(columns, str) else list(columns)


def _names(columns) -> tuple[str, ...]:
    return tuple(str(c) for c in _names_raw(columns))


def _float_array(name: str, value) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be an array of numbers, got {type(value).__name__}."
        ) from None


def _target(target, T: int) -> np.ndarray:
    y = _float_array("target", target)
    if y.shape != (T,):
        raise ValueError(
            f"`target` must have shape [T] = [{T}] to match the features' {T} rows, got "
            f"shape {y.shape}."
        )
    check_values("`target`", y)
    return y


def _numeric(df: pd.DataFrame, col, what: str) -> np.ndarray:
    s = df[col]
    if isinstance(s, pd.DataFrame):
        raise ValueError(f"{what} column {col!r} appears more than once in the table.")
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        bad = np.flatnonzero((pd.to_numeric(s, errors="coerce").isna() & s.notna()).to_numpy())
        example = f" (row {bad[0]}: {s.iloc[bad[0]]!r})" if bad.size else ""
        raise ValueError(
            f"{what} column {col!r} must be numeric, got dtype {s.dtype}{example}; choose the "
            "feature columns with `columns`."
        )
    x = s.to_numpy(dtype=np.float64, na_value=np.nan)
    check_values(f"{what} column {col!r}", x)
    return x


def _seconds(s: pd.Series, col) -> np.ndarray:
    """Timestamps as float seconds: numbers as they are, datetimes relative to the first."""
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        x = s.to_numpy(dtype=np.float64, na_value=np.nan)
        check_values(f"time column {col!r}", x, allow_nan=False)
        return x
    if not pd.api.types.is_datetime64_any_dtype(s):
        try:
            s = pd.to_datetime(s)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"time column {col!r} must hold timestamps (seconds as numbers, or "
                f"datetimes): {err}"
            ) from None
    missing = np.flatnonzero(s.isna().to_numpy())
    if missing.size:
        raise ValueError(f"time column {col!r} has a missing timestamp at row {missing[0]}.")
    # pandas' own seconds (what a user computes with .dt.total_seconds()): the same float64
    # timestamps from a datetime column as from the seconds a user derives from it
    return (s - s.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)
