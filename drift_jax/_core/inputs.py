"""Checking and shaping of the time series a filter consumes: observations and step lengths.

Named data. A ``pandas.DataFrame``, a dict ``{name: [T] values}`` or a ``dj.History`` is
*named*: its columns are matched by name to the model's ``observation.feature_names``
(``features_in_order``), so reordered columns give the same numbers as ordered ones, and a
column the model has no feature for (or a feature without a column) is an error that names
them. A model without ``feature_names`` takes named columns in the order given (their
number must match). A plain array is taken as it is, ``[T, m]`` in the model's order.

Equal timestamps. A step length ``dt = 0`` is allowed: it is a second observation at the
same time as the previous one, an update with no prediction (every dynamics gives ``F = I``,
``Q = 0`` at ``dt = 0``), so two observations at one time filter exactly as the two stacked
into one vector observation (README, "Equal timestamps"). For an IMM whose ``Pi`` is per
cycle (``dj.IMMModel``) the regime chain still moves one cycle at a ``dt = 0`` step: the
cycle is the model's unit of time there, not the second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from . import validate as v
from .types import Array, DtLike, Float, ObsLike


def _is_dataframe(x) -> bool:
    cls = type(x)
    return cls.__name__ == "DataFrame" and cls.__module__.split(".")[0] == "pandas"


def _is_history(x) -> bool:
    """A ``dj.History`` (or anything that holds ``features`` [T, m] with ``feature_names``)."""
    return hasattr(x, "features") and hasattr(x, "feature_names") and not _is_dataframe(x)


def is_named(x) -> bool:
    """Whether ``x`` is named data: a ``pandas.DataFrame``, a mapping or a ``dj.History``."""
    return _is_dataframe(x) or isinstance(x, Mapping) or _is_history(x)


def features_in_order(
    data, feature_names: tuple[str, ...] | None, num_features: int, name: str = "zs"
) -> np.ndarray:
    """Named data as a ``[T, m]`` float64 array in the model's feature order.

    Arguments:
        data: a ``pandas.DataFrame`` (its columns), a mapping ``{name: [T] values}`` or a
            ``dj.History`` (its ``features`` under its ``feature_names``).
        feature_names: the model's ``observation.feature_names``, or ``None`` (the model
            declares none: the columns are taken in the order given).
        num_features: the model's ``m``.
        name: the argument's name, for messages.

    Raises:
        ValueError: naming the missing and the extra columns (or, without names, the
            column count that does not match ``m``).
        ArgumentTypeError: for a column that is not numeric.

    Example:
        >>> import pandas as pd
        >>> from drift_jax._core.inputs import features_in_order
        >>> df = pd.DataFrame({"dbim": [2.0, 4.0], "bim": [1.0, 3.0]})
        >>> features_in_order(df, ("bim", "dbim"), 2).tolist()
        [[1.0, 2.0], [3.0, 4.0]]
    """
    if _is_history(data):
        cols = [str(c) for c in data.feature_names]
        values = np.asarray(data.features, dtype=np.float64)
        columns = {c: values[:, k] for k, c in enumerate(cols)}
    elif _is_dataframe(data):
        cols = list(data.columns)
        if len(set(cols)) != len(cols):
            twice = sorted({str(c) for c in cols if cols.count(c) > 1})
            raise ValueError(f"`{name}` has column(s) {twice} more than once.")
        columns = {c: data[c] for c in cols}
    else:
        cols = list(data.keys())
        columns = dict(data)
    shown = [str(c) for c in cols]
    if feature_names is None:
        if len(cols) != num_features:
            raise ValueError(
                f"`{name}` has {len(cols)} named column(s) {shown} but the model has "
                f"{num_features} feature(s) and declares no feature_names to match them by; "
                "select the feature columns (in the model's order), or give the model "
                "feature_names (dj.Observation(..., feature_names=...))."
            )
        order = cols
    else:
        missing = [c for c in feature_names if c not in columns]
        extra = [c for c in shown if c not in feature_names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"extra {extra}")
            raise ValueError(
                f"the columns of `{name}` do not match the model's feature_names "
                f"{list(feature_names)}: {' and '.join(parts)}; got columns {shown}. Columns "
                f"are matched by name (any order); select the features, e.g. "
                f"{name}[{list(feature_names)}]."
            )
        order = list(feature_names)
    out = [_numeric_column(name, str(c), columns[c]) for c in order]
    lengths = {a.shape[0] for a in out}
    if len(lengths) > 1:
        raise ValueError(f"the columns of `{name}` have different lengths {sorted(lengths)}.")
    return np.stack(out, axis=-1) if out else np.zeros((0, 0))


def _numeric_column(name: str, col: str, values) -> np.ndarray:
    kind = getattr(getattr(values, "dtype", None), "kind", None)
    if kind == "b":
        raise v.ArgumentTypeError(f"column {col!r} of `{name}` must be numeric, got booleans.")
    try:
        if hasattr(values, "to_numpy"):
            arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        example = ""
        seq = list(values)[:1000] if hasattr(values, "__iter__") else []
        for k, x in enumerate(seq):
            try:
                float(x)
            except (TypeError, ValueError):
                example = f" (row {k}: {x!r})"
                break
        raise v.ArgumentTypeError(
            f"column {col!r} of `{name}` must be numeric (NaN marks missing){example}."
        ) from None
    if arr.ndim != 1:
        raise ValueError(
            f"column {col!r} of `{name}` must be a vector [T], got shape {arr.shape}."
        )
    return arr


def _as_numbers(name: str, value, what: str):
    """``value`` as an array (a traced value as it is); strings and objects are type errors."""
    if v.is_traced(value) or isinstance(value, jnp.ndarray):
        return value
    if isinstance(value, str | bytes) or value is None:
        raise v.ArgumentTypeError(f"`{name}` must be {what}, got {value!r}.")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise v.ArgumentTypeError(
            f"`{name}` must be {what}, got {type(value).__name__}."
        ) from None
    if arr.dtype.kind not in "fiu":
        raise v.ArgumentTypeError(
            f"`{name}` must be {what}, got an array of dtype {arr.dtype} ({type(value).__name__})."
        )
    return arr


class _NotGiven:
    def __repr__(self) -> str:
        return "<not given>"


#: ``prepare_observations``'s default ``feature_names``: the caller did not say what the
#: model's names are (so named data cannot be matched, and is refused rather than guessed).
NOT_GIVEN = _NotGiven()


def prepare_observations(
    zs: ObsLike,
    num_features: int,
    dtype,
    feature_names: tuple[str, ...] | None | _NotGiven = NOT_GIVEN,
) -> Float[Array, "T m"]:
    """Return ``zs`` as ``[T, m]`` in ``dtype``; NaN is kept (missing), ``+-inf`` is an error.

    ``zs`` is an array ``[T]`` / ``[T, m]`` in the model's feature order, or named data (a
    ``pandas.DataFrame``, a dict of columns, a ``dj.History``) matched by name to
    ``feature_names`` (the model's ``observation.feature_names``; see
    ``features_in_order``). A string or another non-numeric value is an
    ``ArgumentTypeError`` before anything is traced. A concrete value too large for the
    filter (``|z| >= sqrt(max float)``: the filter squares innovations, so it would overflow
    to inf and every later output to NaN) or one that overflows ``dtype`` when cast (``1e39``
    in float32) is a ``ValueError`` naming the step. An entry point that passes no
    ``feature_names`` (``NOT_GIVEN``) refuses named data instead of guessing its order.
    """
    if is_named(zs):
        if feature_names is NOT_GIVEN:
            raise ValueError(
                "`zs` is named data (a DataFrame or a dict of columns), which this function "
                "does not match to the model's feature_names yet; pass an array in the "
                "model's feature order, e.g. df[list(model.observation.feature_names)]"
                ".to_numpy()."
            )
        zs = features_in_order(zs, feature_names, num_features)
    what = "an array of numbers [T] or [T, m] (or a DataFrame of the model's features)"
    raw = _as_numbers("zs", zs, what)
    arr = jnp.asarray(raw)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(dtype)
    arr = arr.astype(dtype)
    if arr.ndim == 1:
        if num_features != 1:
            raise ValueError(
                f"`zs` has shape {arr.shape} (one feature per step) but the observation model "
                f"has m={num_features} features; pass `zs` of shape [T, {num_features}]."
            )
        arr = arr[:, None]
    elif arr.ndim != 2 or arr.shape[1] != num_features:
        raise ValueError(
            f"`zs` must have shape [T] or [T, m] with m={num_features} features (the width of "
            f"the observation model), got shape {arr.shape}."
        )
    if arr.shape[0] == 0:
        raise ValueError("`zs` must hold at least one time step, got T=0.")
    if not v.is_traced(arr):
        _check_magnitude("zs", np.asarray(raw), np.asarray(arr))
    return check_no_inf("zs", arr)


def _check_magnitude(name: str, raw: np.ndarray, cast: np.ndarray) -> None:
    """Values that overflow ``cast``'s dtype, or whose squares do (the filter's quadratic
    forms): a ``ValueError`` naming the first one's step (and feature)."""
    if cast.size == 0:
        return
    raw = raw.reshape(cast.shape) if raw.size == cast.size else raw
    info = np.finfo(cast.dtype)
    limit = math.sqrt(float(info.max))
    with np.errstate(invalid="ignore", over="ignore"):
        over_cast = np.isfinite(raw.astype(np.float64)) & np.isinf(cast)
        too_big = np.isfinite(cast) & (np.abs(cast) >= limit)
    for bad, why in (
        (over_cast, f"overflows {cast.dtype.name} (largest {float(info.max):.3g}) when cast"),
        (
            too_big,
            f"is too large for the filter in {cast.dtype.name}: |z| must be < sqrt(max) = "
            f"{limit:.3g}, or its square (the innovation's) overflows to inf and every later "
            "output turns NaN",
        ),
    ):
        if np.any(bad):
            idx = np.argwhere(bad)
            first = tuple(int(i) for i in idx[0])
            where = f"step {first[0]}" + (f", feature {first[1]}" if len(first) > 1 else "")
            value = float(np.asarray(raw, dtype=np.float64)[first])
            raise ValueError(
                f"`{name}` at {where} ({value!r}) {why}; {len(idx)} value(s) like it. "
                "Rescale the features or mark bad ticks as missing (NaN)."
            )


def check_no_inf(name: str, arr: Array) -> Array:
    if v.is_traced(arr):
        # The check rides on a scalar zero added to the array: attached to the array itself
        # it makes XLA copy the array (~10 ms per 4096 x 1000 batch, ~10% of an IMM filter).
        zero = eqx.error_if(
            jnp.zeros((), arr.dtype),
            jnp.any(jnp.isinf(arr)),
            f"`{name}` must not contain +-inf (NaN marks missing).",
        )
        return arr + zero
    a = np.asarray(arr)
    if np.any(np.isinf(a)):
        where = np.argwhere(np.isinf(a))[:5].tolist()
        raise ValueError(
            f"`{name}` must not contain +-inf (NaN marks missing data); found inf at "
            f"indices {where}."
        )
    return arr


#: What a step length may be (the policy in the module docstring).
DT_ALLOWED = "finite and >= 0 (seconds; 0 is an update at the time of the previous step)"


def prepare_dt(dt: DtLike, num_steps: int, dtype) -> Float[Array, "..."]:
    """Return ``dt`` as a scalar or ``[T]`` array; each step length finite and ``>= 0``.

    ``dt = 0`` is an update with no prediction (equal timestamps; module docstring)."""
    raw = _as_numbers("dt", dt, "a step length in seconds: a number or an array [T] of numbers")
    arr = jnp.asarray(raw)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(dtype)
    arr = arr.astype(dtype)
    if arr.ndim not in (0, 1) or (arr.ndim == 1 and arr.shape[0] != num_steps):
        raise ValueError(
            f"`dt` must be a scalar or have shape [T] = [{num_steps}], got shape {arr.shape}."
        )
    return v.check("dt", arr, lambda d: jnp.isfinite(d) & (d >= 0), DT_ALLOWED)


def check_finite(result, zs=None, dt=None, *, name: str = "the filter"):
    """Raise a ``ValueError`` naming the first step whose outputs are not finite.

    A filter's outputs turn non-finite when its arithmetic overflows (an input near the
    float's largest value, a model whose variances overflow): from that step on every value
    is NaN or inf. ``dj.check_finite`` finds the first such step and says what it holds
    (with the inputs there when ``zs`` / ``dt`` are given). Concrete results only (outside
    ``jit``); the result is returned unchanged when every output is finite.

    Arguments:
        result: a ``dj.filter`` result (``dj.KalmanResult`` / ``dj.IMMResult``; a batch of
            them from ``vmap`` too: the message names the path).
        zs, dt: optionally the inputs, to show them in the message.
        name: what produced ``result`` (for the message).

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(1.0), 0.0, 1.0)
        >>> res = dj.check_finite(dj.filter(model, np.array([0.5, 1.0]), 0.1))
        >>> bool(np.isfinite(res.log_likelihood))
        True
    """
    parts = {
        "drift": result.drift,
        "drift_var": result.drift_var,
        "log_likelihood_step": result.log_likelihoods,
        "regime_probs": result.regime_probs,
    }
    if any(v.is_traced(x) for x in parts.values()):
        raise v.ArgumentTypeError(
            "`dj.check_finite` checks a concrete result (call it outside jit / vmap)."
        )
    arrays = {k: np.asarray(x) for k, x in parts.items()}
    lead = arrays["drift"].shape  # [..., T]
    bad = np.zeros(lead, dtype=bool)
    for x in arrays.values():
        bad |= ~np.all(np.isfinite(x.reshape(lead + (-1,))), axis=-1)
    if not np.any(bad):
        return result
    first = np.argwhere(bad)  # C order: among the earliest step's rows, the first path
    row = first[np.flatnonzero(first[:, -1] == first[:, -1].min())[0]]
    index = tuple(int(i) for i in row)
    step = index[-1]
    path = f" of path {index[:-1] if len(index) > 2 else index[0]}" if len(index) > 1 else ""
    shown = ", ".join(f"{k}={arrays[k][index].tolist()!r}" for k in arrays)
    inputs = ""
    if zs is not None:
        z = np.asarray(zs, dtype=np.float64)
        z = z.reshape(lead + (-1,))[index]
        inputs += f"; its input z={z.tolist()}"
    if dt is not None:
        d = np.asarray(dt, dtype=np.float64)
        d = d if d.ndim == 0 else d[index] if d.shape == lead else d.reshape(-1)[step]
        inputs += f", dt={float(d)!r}"
    raise ValueError(
        f"{name}'s outputs are not finite from step {step}{path} on ({shown}){inputs}: its "
        "arithmetic overflowed (an input too large for the dtype, or a variance that "
        "overflows); rescale the features, mark bad ticks as missing (NaN), or use float64."
    )
