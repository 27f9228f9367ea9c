"""A timestamped history file as the filter's inputs: features ``[T, m]``, ``dt`` ``[T]``,
and optionally the realised returns.

This is the data path of the command line (``drift-jax fit / golden / filter``) and of
notebooks that start from a file. Step lengths come from the time column: ``dt_k = t_k -
t_{k-1}`` for ``k >= 1``. The first row has no predecessor, so its step length
``dt_0`` (the time from the prior to the first observation) is a choice: by default the
first gap ``t_1 - t_0``, or ``first_dt`` seconds when given; ``History.first_dt_rule``
says which, and the command line prints it.

Every error is a ``ValueError`` that names the file, and the column and row (counted from
0, the header excluded) where it applies.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from .._core import validate as v
from .._core.optional import optional_pandas
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
    """

    source: str
    times: np.ndarray
    dt: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    returns: np.ndarray | None = None
    returns_source: str | None = None
    first_dt_rule: str = ""

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
) -> History:
    """Read a timestamped CSV / Parquet file (or a DataFrame) into the filter's inputs.

    Arguments:
        history: the path of a ``.csv`` / ``.parquet`` file, or a ``pandas.DataFrame``.
        time_column: timestamps, seconds as numbers or datetimes; strictly increasing.
        columns: the feature columns in the model's order (a config's ``feature_names``).
            Default: every column other than the time, returns and price columns.
        num_features: the model's number of features ``m``; the columns must match it.
        returns_column: realised returns in bps, ``returns[k]`` over ``(t_{k-1}, t_k]``.
        price_column: prices (``> 0``) to take the returns from (``dj.simple_returns``);
            give at most one of ``returns_column`` and ``price_column``.
        first_dt: the first step's length in seconds (``> 0``); default ``t_1 - t_0``.

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
    try:
        t = _seconds(df[time_column], time_column)
        check_increasing(f"column {time_column!r}", t, df[time_column].to_numpy())
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
    dt = np.empty_like(t)
    dt[1:] = np.diff(t)
    if first_dt is None:
        if t.size < 2:
            fail("one row has no gap to take the first step's dt from: pass `first_dt`.")
        dt[0] = dt[1]
        rule = f"dt[0] = t[1] - t[0] = {dt[0]:.6g} s (the first gap)"
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
