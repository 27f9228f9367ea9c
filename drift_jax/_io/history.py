"""A timestamped history file as the filter's inputs: features ``[T, m]``, ``dt`` ``[T]``,
and optionally the realised returns.

This is the data path of the command line (``drift-jax fit / golden / filter``) and of
notebooks that start from a file. Step lengths come from the time column: ``dt_k = t_k -
t_{k-1}`` for ``k >= 1``. The first row has no predecessor, so its step length
``dt_0`` (the time from the prior to the first observation) is a choice: by default the
first gap ``t_1 - t_0`` (the first positive one), or ``first_dt`` seconds when given;
``History.first_dt_rule`` says which, and the command line prints it.

Equal timestamps (common in real feeds) are kept by default as steps of ``dt = 0``: an
update with no prediction, which filters exactly as the rows stacked into one vector
observation (README, "Equal timestamps"). ``equal_times="last"`` keeps only the last row of
each timestamp (a ``dj.DataWarning`` says how many rows were dropped), ``"error"`` rejects
them.

Every error is a ``ValueError`` that names the file, and the column and row (counted from
0, the header excluded) where it applies.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from .._core import validate as v
from .._core.optional import optional_pandas
from .._core.validate import DataWarning
from .feature_table import _numeric, _seconds, check_increasing, read_table

pd = optional_pandas()

__all__ = ["History", "read_history", "simple_returns"]


class HistoryError(ValueError):
    """A history file that cannot be used as it is (the message names file, column, row)."""


@dataclasses.dataclass(frozen=True, eq=False)
class History:
    """What ``dj.read_history`` returns.

    Attributes:
        source: the file (or ``"<DataFrame>"``).
        times: ``[T]`` timestamps in seconds (numbers as given; datetimes as seconds after
            the first row).
        dt: ``[T]`` step lengths in seconds; ``dt[0]`` is the first step's (see
            ``first_dt_rule``).
        features: ``[T, m]`` float64, NaN = missing.
        feature_names: the ``m`` columns, in the order the model uses them.
        returns: ``[T]`` realised returns in bps (``returns[k]`` over step ``k``'s
            interval ``(t_{k-1}, t_k]``; ``returns[0]`` is NaN when taken from prices), or
            None.
        returns_source: how ``returns`` were obtained (a column name, or from prices).
        first_dt_rule: a sentence saying how ``dt[0]`` was chosen.
        ignored_columns: the table's columns that are neither features nor the time,
            returns or price column (read and not used).
        equal_times_rule: a sentence saying how equal timestamps were treated.
    """

    source: str
    times: np.ndarray
    dt: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    returns: np.ndarray | None = None
    returns_source: str | None = None
    first_dt_rule: str = ""
    ignored_columns: tuple[str, ...] = ()
    equal_times_rule: str = ""

    @property
    def num_steps(self) -> int:
        return int(self.features.shape[0])

    @property
    def duration(self) -> float:
        """Seconds from the first to the last row."""
        return float(self.times[-1] - self.times[0])


def simple_returns(prices: np.ndarray) -> np.ndarray:
    """``r_k = 1e4 (p_k / p_{k-1} - 1)`` in bps; ``r_0`` and steps next to a missing price are
    NaN. The same convention as ``dj.realised_drift``."""
    p = np.asarray(prices, dtype=np.float64)
    r = np.full(p.shape, np.nan)
    r[1:] = 1e4 * (p[1:] / p[:-1] - 1.0)
    return r


def read_history(
    history,
    *,
    time_column: str = "time",
    columns=None,
    num_features: int | None = None,
    returns_column: str | None = None,
    price_column: str | None = None,
    first_dt: float | None = None,
    equal_times: str = "keep",
) -> History:
    """Read a timestamped CSV / Parquet file (or a DataFrame) into the filter's inputs.

    Arguments:
        history: the path of a ``.csv`` / ``.parquet`` file, or a ``pandas.DataFrame``.
        time_column: timestamps, seconds as numbers or datetimes; never decreasing.
        columns: the feature columns in the model's order (a config's ``feature_names``).
            Default: every column other than the time, returns and price columns.
        num_features: the model's number of features ``m``; the columns must match it.
        returns_column: realised returns in bps, ``returns[k]`` over ``(t_{k-1}, t_k]``.
        price_column: prices (``> 0``) to take the returns from (``dj.simple_returns``);
            give at most one of ``returns_column`` and ``price_column``.
        first_dt: the first step's length in seconds (``> 0``); default ``t_1 - t_0``
            (the first positive gap when the first rows share a timestamp).
        equal_times: rows with the timestamp of the previous row: ``"keep"`` (default:
            steps of ``dt = 0``, updates with no prediction), ``"last"`` (only the last row
            of each timestamp is kept; with ``returns_column`` the returns of a timestamp's
            rows are summed; a ``dj.DataWarning`` names the rows dropped) or ``"error"``.

    Returns:
        A ``dj.History``: ``features`` ``[T, m]``, ``dt`` ``[T]``, ``returns``,
        ``times``, ``feature_names``, ``first_dt_rule``.

    Example:
        >>> import pandas as pd, drift_jax as dj
        >>> df = pd.DataFrame({"time": [0.0, 0.5, 1.5], "bim": [1.0, None, 2.0]})
        >>> h = dj.read_history(df)
        >>> h.dt.tolist(), h.feature_names, h.first_dt_rule
        ([0.5, 0.5, 1.0], ('bim',), 'dt[0] = t[1] - t[0] = 0.5 s (the first gap)')
    """
    v.one_of("equal_times", equal_times, ("keep", "last", "error"))
    source, df = _table(history)

    def fail(message: str):
        raise HistoryError(f"{source}: {message}")

    if len(df) == 0:
        fail(f"the table has a header ({list(df.columns)}) but no data rows.")
    if returns_column is not None and price_column is not None:
        fail(
            "give at most one of `returns_column` and `price_column`, got "
            f"returns_column={returns_column!r} and price_column={price_column!r}."
        )
    special = [c for c in (time_column, returns_column, price_column) if c is not None]
    for label, col in (
        ("time", time_column),
        ("returns", returns_column),
        ("price", price_column),
    ):
        if col is not None and col not in df.columns:
            fail(f"{label} column {col!r} not found; columns are {list(df.columns)}.")
    if columns is None:
        names = [c for c in df.columns if c not in special]
    else:
        names = [columns] if isinstance(columns, str) else list(columns)
        missing = [c for c in names if c not in df.columns]
        if missing:
            fail(
                f"feature column(s) {missing} not found (wanted {names}, in the model's "
                f"order); columns are {list(df.columns)}."
            )
        clash = [c for c in names if c in special]
        if clash:
            fail(f"column(s) {clash} cannot be both a feature and the time/returns/price.")
    if not names:
        fail(f"no feature columns besides {special}.")
    if num_features is not None and len(names) != num_features:
        fail(
            f"the model has {num_features} feature(s) but the history gives {len(names)} "
            f"feature column(s) {names}; choose them with `columns` (the config's "
            "`feature_names`) in the model's order."
        )
    ignored = tuple(str(c) for c in df.columns if c not in special and c not in names)
    try:
        t = _seconds(df[time_column], time_column)
        hint = (
            "; equal_times='keep' (the default; --equal-times keep) filters equal "
            "timestamps as dt = 0 updates, 'last' keeps the last row of each"
        )
        strict = equal_times == "error"
        check_increasing(
            f"column {time_column!r}", t, df[time_column].to_numpy(), strict=strict, hint=hint
        )
        Z = np.column_stack([_numeric(df, c, "feature") for c in names])
        returns, how = None, None
        if returns_column is not None:
            returns, how = _numeric(df, returns_column, "returns"), f"column {returns_column!r}"
        elif price_column is not None:
            p = _numeric(df, price_column, "price")
            bad = np.flatnonzero(p <= 0)
            if bad.size:
                raise ValueError(
                    f"price column {price_column!r} must be > 0 (or NaN, missing); got "
                    f"{float(p[bad[0]])!r} at row {bad[0]}."
                )
            returns, how = simple_returns(p), f"1e4 (p_k / p_(k-1) - 1) of {price_column!r}"
    except ValueError as err:
        fail(str(err))
    same = np.flatnonzero(np.diff(t) == 0) + 1  # rows stamped as the row before
    if equal_times == "last" and same.size:
        keep = np.ones(t.size, bool)
        keep[same - 1] = False  # of each run of equal stamps only the last row stays
        if returns is not None and returns_column is not None:
            group = np.cumsum(keep[::-1])[::-1]  # one id per kept row and the rows before it
            group = group.max() - group
            seen = ~np.isnan(returns)
            sums = np.bincount(group, np.where(seen, returns, 0.0), minlength=keep.sum())
            any_seen = np.bincount(group, seen, minlength=keep.sum()) > 0
            returns = np.where(any_seen, sums, np.nan)
        elif returns is not None:  # from prices: the kept rows' prices
            p = _numeric(df, price_column, "price")[keep]
            returns = simple_returns(p)
        dropped = np.flatnonzero(~keep)
        warnings.warn(
            DataWarning(
                f"{source}: equal_times='last' dropped {dropped.size} row(s) stamped as the "
                f"row after them: rows {dropped[:10].tolist()}"
                + (f" and {dropped.size - 10} more" if dropped.size > 10 else "")
                + " (rows counted from 0, header excluded)."
            ),
            stacklevel=2,
        )
        t, Z = t[keep], Z[keep]
        equal_rule = f"equal timestamps: kept the last row of each ({dropped.size} dropped)"
    elif same.size:
        equal_rule = f"equal timestamps: {same.size} step(s) of dt = 0 (updates, no prediction)"
    else:
        equal_rule = "no equal timestamps"
    dt = np.empty_like(t)
    dt[1:] = np.diff(t)
    if first_dt is None:
        gaps = np.flatnonzero(dt[1:] > 0)
        if gaps.size == 0:
            fail("no gap between timestamps to take the first step's dt from: pass `first_dt`.")
        k = int(gaps[0]) + 1
        dt[0] = dt[k]
        which = "the first gap" if k == 1 else "the first positive gap"
        rule = f"dt[0] = t[{k}] - t[{k - 1}] = {dt[0]:.6g} s ({which})"
    else:
        try:
            value = v.positive_float("first_dt", first_dt, "a number of seconds > 0")
        except v.ArgumentTypeError:
            raise
        except ValueError as err:
            fail(str(err))
        dt[0] = value
        rule = f"dt[0] = {value:.6g} s (given)"
    return History(
        source=source,
        times=t,
        dt=dt,
        features=Z,
        feature_names=tuple(str(c) for c in names),
        returns=returns,
        returns_source=how,
        first_dt_rule=rule,
        ignored_columns=ignored,
        equal_times_rule=equal_rule,
    )


def _table(history) -> tuple[str, pd.DataFrame]:
    if isinstance(history, pd.DataFrame):
        return "<DataFrame>", history
    if not isinstance(history, str | os.PathLike):
        raise v.ArgumentTypeError(
            "`history` must be a CSV / Parquet path or a pandas.DataFrame, got "
            f"{type(history).__name__}."
        )
    path = Path(history)
    if path.is_file() and path.stat().st_size == 0:
        raise HistoryError(f"{path}: the file is empty.")
    try:
        return str(path), read_table(path)
    except ValueError as err:
        raise HistoryError(f"{path}: {err}") from None
