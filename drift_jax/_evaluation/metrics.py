"""Accuracy and calibration of a drift estimate against the true drift (Monte Carlo metrics).

Conventions shared with ``_evaluation/event_metrics.py``: a path is an array whose LAST
axis is time (``[..., T]``); leading axes are a batch of paths and broadcast against each
other. The estimate is the filtered drift (bps/s), ``variance`` its filtered variance,
``truth`` the simulated true drift and ``regimes`` the true regime index at each step. NaN
in the estimate means "no estimate at this step" and the step is left out of every average.

The summary scores (``rmse``, ``coverage``, ``nees``, ``nees_state``,
``mean_log_likelihood``) pool over all axes by default; ``axis=-1`` gives one number per
path. ``squared_error_sums`` gives per-path sums and counts, so a Monte Carlo runner can
add chunks of paths and get the pooled numbers exactly.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Real

from .._core import linalg as la, validate as v
from .._core.ordered_sum import ordered_sum
from .._core.types import Array, ArrayLike, Bool, Float, Int, ScalarLike

PathLike = Real[ArrayLike, "..."] | list | tuple
RegimesLike = Int[ArrayLike, "..."] | list | tuple
MaskLike = Bool[ArrayLike, "..."] | list | tuple
AxisLike = int | tuple[int, ...] | None


# --- input handling shared by the metrics modules -------------------------------------------


def _time_axis(name: str, arr: Array) -> Array:
    if arr.ndim < 1:
        raise ValueError(
            f"`{name}` must be a path with time as its last axis ([..., T]), got a scalar."
        )
    if arr.shape[-1] < 1:
        raise ValueError(f"`{name}` must have at least one step, got shape {arr.shape}.")
    return arr


def path(name: str, value) -> Array:
    """A float path ``[..., T]`` (at least one axis, the last one is time, T >= 1)."""
    return _time_axis(name, v.as_float_array(name, value))


def regime_path(name: str, value) -> Array:
    """An integer path of regime indices."""
    arr = _time_axis(name, jnp.asarray(value))
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise v.ArgumentTypeError(
            f"`{name}` must be an integer array of regime indices, got dtype {arr.dtype}."
        )
    return arr


def mask(name: str, value) -> Array:
    arr = jnp.asarray(value)
    if arr.dtype != jnp.bool_:
        raise v.ArgumentTypeError(f"`{name}` must be a boolean mask, got dtype {arr.dtype}.")
    return arr


def step_lengths(dt) -> Array:
    """``dt`` in seconds per step: a scalar or a path; finite and ``>= 0``."""
    return v.nonnegative("dt", dt)


def broadcast_shape(**shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return np.broadcast_shapes(*shapes.values())
    except ValueError:
        shown = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"shapes must broadcast against each other; got {shown}.") from None


def broadcast(**arrays: Array) -> tuple[Array, ...]:
    """Broadcast named arrays to one shape (explicitly: the tests forbid rank promotion)."""
    shape = broadcast_shape(**{k: a.shape for k, a in arrays.items()})
    return tuple(jnp.broadcast_to(a, shape) for a in arrays.values())


def index(name: str, value) -> int | Array:
    """A regime index: a Python int ``>= 0`` (or a traced integer, not checked)."""
    if v.is_traced(value):
        return value
    return v.nonnegative_int(name, value)


def bounded(name: str, value, ok, allowed: str) -> Array:
    """A scalar setting (Python number or traced scalar) that satisfies ``ok``."""
    if not v.is_traced(value):
        v.real(name, value, allowed)  # the type: a real scalar, not a bool / str / array
    arr = v.scalar(name, v.as_float_array(name, value))
    # Under jit even a Python number's check is staged out (omnistaging): a tracer.
    if v.is_traced(arr):
        return v.check(name, arr, ok, allowed)
    if not bool(ok(arr)):
        raise ValueError(v.message(name, value, allowed))
    return arr


def probability(name: str, value) -> Array:
    return bounded(name, value, lambda x: (x >= 0) & (x <= 1), "in [0, 1]")


def _pooled_mean(x: Array, valid: Array, axis: AxisLike) -> Array:
    """Mean of ``x`` over ``valid`` entries along ``axis``; NaN where nothing is valid."""
    total = jnp.sum(jnp.where(valid, x, 0), axis=axis)
    count = jnp.sum(valid, axis=axis)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def _errors(estimate, truth, where) -> tuple[Array, Array]:
    est, tru = path("estimate", estimate), path("truth", truth)
    if where is None:
        est, tru = broadcast(estimate=est, truth=tru)
        ok = jnp.ones(est.shape, bool)
    else:
        est, tru, ok = broadcast(estimate=est, truth=tru, where=mask("where", where))
    err = est - tru
    return err, ok & ~jnp.isnan(err)


# --- tracking error -------------------------------------------------------------------------


def squared_error_sums(
    estimate: PathLike, truth: PathLike, regimes: RegimesLike, num_regimes: int
) -> tuple[Float[Array, "... M"], Int[Array, "... M"]]:
    """Per-path, per-true-regime sums of squared tracking errors and their step counts.

    ``sums[..., r] = sum_k (estimate_k - truth_k)^2 [regimes_k = r]`` over steps with an
    estimate (NaN estimates are left out of both sums and counts). Adding ``sums`` and
    ``counts`` over chunks of paths and taking ``sqrt(sums / counts)`` gives the pooled
    RMSE per regime exactly.

    Arguments:
        estimate: filtered drift ``[..., T]`` (bps/s).
        truth: true drift ``[..., T]``, broadcastable against ``estimate``.
        regimes: true regime index ``[..., T]``, integers in ``[0, num_regimes)``.
        num_regimes: ``M``, a Python int ``>= 1``.

    Returns:
        ``(sums [..., M], counts [..., M])``.

    Example:
        >>> import drift_jax as dj
        >>> sums, counts = dj.metrics.squared_error_sums(
        ...     [1.0, 2.0, 4.0], [0.0, 0.0, 0.0], [0, 1, 1], num_regimes=2)
        >>> sums.tolist(), counts.tolist()
        ([1.0, 20.0], [1, 2])
    """
    num_regimes = v.positive_int("num_regimes", num_regimes)
    err, ok = _errors(estimate, truth, None)
    reg = regime_path("regimes", regimes)
    reg = v.check(
        "regimes",
        reg,
        lambda r: (r >= 0) & (r < num_regimes),
        f"regime indices in [0, num_regimes={num_regimes})",
    )
    err, ok, reg = broadcast(estimate=err, valid=ok, regimes=reg)
    labels = jnp.arange(num_regimes).reshape((1,) * reg.ndim + (num_regimes,))
    onehot = (reg[..., None] == labels) & ok[..., None]
    sq = jnp.where(ok, err * err, 0)
    # A fixed order of additions: a path's sums do not depend on the batch around it.
    sums = ordered_sum(jnp.where(onehot, sq[..., None], 0), axis=-2)
    counts = jnp.sum(onehot, axis=-2)
    return sums, counts


def rmse(
    estimate: PathLike, truth: PathLike, where: MaskLike | None = None, *, axis: AxisLike = None
) -> Float[Array, "..."]:
    """Root-mean-square tracking error ``sqrt(mean (estimate - truth)^2)``.

    Arguments:
        estimate: filtered drift ``[..., T]``; NaN steps are left out.
        truth: true drift, broadcastable against ``estimate``.
        where: optional boolean mask of the steps to include (broadcastable).
        axis: axes to pool over (``None``: all, a scalar; ``-1``: one RMSE per path).

    Returns:
        The RMSE (NaN when no step is included).

    Example:
        >>> import drift_jax as dj
        >>> float(dj.metrics.rmse([1.0, 0.0, float("nan")], [0.0, 7.0, 1.0]))
        5.0
    """
    err, ok = _errors(estimate, truth, where)
    return jnp.sqrt(_pooled_mean(err * err, ok, axis))


def rmse_by_regime(
    estimate: PathLike, truth: PathLike, regimes: RegimesLike, num_regimes: int
) -> Float[Array, "... M"]:
    """RMSE per path and per true regime, ``[..., M]``; NaN for a regime never visited.

    ``sqrt(sums / counts)`` of ``squared_error_sums`` (which to use for pooling paths).

    Example:
        >>> import drift_jax as dj
        >>> dj.metrics.rmse_by_regime([1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [0, 2, 2], 3).tolist()
        [1.0, nan, 2.0]
    """
    sums, counts = squared_error_sums(estimate, truth, regimes, num_regimes)
    return jnp.where(counts > 0, jnp.sqrt(sums / jnp.maximum(counts, 1)), jnp.nan)


# --- calibration ----------------------------------------------------------------------------


def _calibration_inputs(estimate, variance, truth, where):
    err, ok = _errors(estimate, truth, where)
    var = v.check(
        "variance",
        path("variance", variance),
        lambda x: jnp.isnan(x) | (x >= 0),
        ">= 0 (NaN for a missing step)",
    )
    err, ok, var = broadcast(error=err, valid=ok, variance=var)
    return err, ok & ~jnp.isnan(var), var


def coverage(
    estimate: PathLike,
    variance: PathLike,
    truth: PathLike,
    *,
    k: ScalarLike = 2.0,
    where: MaskLike | None = None,
    axis: AxisLike = None,
) -> Float[Array, "..."]:
    """Share of steps whose ``estimate +- k sqrt(variance)`` band contains the truth.

    For a calibrated Gaussian filter the ``+-2 sigma`` band covers about 95.45% of steps.

    Arguments:
        estimate: filtered drift ``[..., T]``; NaN steps are left out.
        variance: its filtered variance, ``>= 0``.
        truth: true drift.
        k: band half-width in standard deviations, ``> 0``.
        where: optional boolean mask of the steps to include.
        axis: axes to pool over (``None``: all).

    Returns:
        The covered fraction in ``[0, 1]`` (NaN when no step is included).

    Example:
        >>> import drift_jax as dj
        >>> float(dj.metrics.coverage([0.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0],
        ...                           [0.0, 0.0, 0.0, 2.0]))
        0.75
    """
    k = bounded("k", k, lambda x: jnp.isfinite(x) & (x > 0), "finite and > 0")
    err, ok, var = _calibration_inputs(estimate, variance, truth, where)
    return _pooled_mean(jnp.abs(err) <= k * jnp.sqrt(var), ok, axis)


def nees(
    estimate: PathLike,
    variance: PathLike,
    truth: PathLike,
    *,
    where: MaskLike | None = None,
    axis: AxisLike = None,
) -> Float[Array, "..."]:
    """Normalised estimation error squared ``mean (estimate - truth)^2 / variance``.

    1 for a calibrated filter of the scalar drift; above 1 the filter is overconfident
    (its variance is too small), below 1 underconfident (Bar-Shalom, Li & Kirubarajan,
    *Estimation with Applications to Tracking and Navigation*, 2001, sec. 5.4).

    Arguments:
        estimate: filtered drift ``[..., T]``; NaN steps are left out.
        variance: its filtered variance, ``> 0``.
        truth: true drift.
        where: optional boolean mask of the steps to include.
        axis: axes to pool over (``None``: all).

    Example:
        >>> import drift_jax as dj
        >>> float(dj.metrics.nees([1.0, 2.0], [1.0, 4.0], [0.0, 0.0]))
        1.0
    """
    v.check(
        "variance",
        path("variance", variance),
        lambda x: jnp.isnan(x) | (x > 0),
        "> 0 (NaN for a missing step)",
    )
    err, ok, var = _calibration_inputs(estimate, variance, truth, where)
    return _pooled_mean(err * err / var, ok, axis)


def nees_state(
    means: PathLike,
    covs: PathLike,
    states: PathLike,
    *,
    where: MaskLike | None = None,
    axis: AxisLike = None,
) -> Float[Array, "..."]:
    """NEES of the full state: ``mean (x_hat - x)^T P^-1 (x_hat - x)``; ``n`` if calibrated.

    For the extended state ``[mu, mu_dot]`` pass ``res.means``, ``res.covs`` and the true
    states; a step with any NaN in the estimate is left out.

    Arguments:
        means: filtered state means ``[..., T, n]``.
        covs: filtered covariances ``[..., T, n, n]`` (positive definite).
        states: true states ``[..., T, n]``.
        where: optional boolean mask ``[..., T]`` of the steps to include.
        axis: axes of ``[..., T]`` to pool over (``None``: all).

    Example:
        >>> import drift_jax as dj
        >>> m = [[1.0, 1.0]]; P = [[[1.0, 0.0], [0.0, 0.25]]]; x = [[0.0, 0.0]]
        >>> float(dj.metrics.nees_state(m, P, x))
        5.0
    """
    mean = v.as_float_array("means", means)
    cov = v.as_float_array("covs", covs)
    state = v.as_float_array("states", states)
    if mean.ndim < 2 or state.ndim < 2 or cov.ndim < 3:
        raise ValueError(
            "`means` and `states` must be [..., T, n] and `covs` [..., T, n, n]; got shapes "
            f"means {mean.shape}, covs {cov.shape}, states {state.shape}."
        )
    n = mean.shape[-1]
    if state.shape[-1] != n or cov.shape[-2:] != (n, n):
        raise ValueError(
            f"state dimensions disagree: means {mean.shape}, covs {cov.shape}, "
            f"states {state.shape} (need [..., T, n], [..., T, n, n], [..., T, n])."
        )
    mean, state = broadcast(means=mean, states=state)
    shape = broadcast_shape(**{"means/states [..., T]": mean.shape[:-1], "covs": cov.shape[:-2]})
    err = jnp.broadcast_to(mean - state, (*shape, n))
    cov = jnp.broadcast_to(cov, (*shape, n, n))
    ok = ~jnp.any(jnp.isnan(err), axis=-1)
    safe = jnp.where(ok[..., None], err, 0)
    q = jnp.sum(safe * la.solve(cov, safe), axis=-1)
    if where is not None:
        q, ok, use = broadcast(steps=q, valid=ok, where=mask("where", where))
        ok = ok & use
    return _pooled_mean(q, ok, axis)


# --- likelihood -----------------------------------------------------------------------------


def mean_log_likelihood(
    log_likelihoods: PathLike, *, axis: AxisLike = None
) -> Float[Array, "..."]:
    """Mean log predictive density per step, ``mean_t log p(z_t | z_<t)``.

    ``res.log_likelihoods`` of ``dj.filter`` holds the per-step terms (``res.log_likelihood``
    is their sum). Dividing by the step count makes runs of different lengths comparable;
    a step with nothing observed contributes 0 and still counts as a step.

    Arguments:
        log_likelihoods: per-step terms ``[..., T]``.
        axis: axes to average over (``None``: all; ``-1``: one value per path).

    Example:
        >>> import drift_jax as dj
        >>> float(dj.metrics.mean_log_likelihood([-1.0, -2.0, 0.0]))
        -1.0
    """
    ll = path("log_likelihoods", log_likelihoods)
    return jnp.mean(ll, axis=axis)


# --- the regime chain -----------------------------------------------------------------------


def transition_counts(regimes: RegimesLike, num_regimes: int) -> Int[Array, "M M"]:
    """``[M, M]`` counts of the true regime's moves ``regimes[..., k-1] -> regimes[..., k]``.

    Pooled over every path (leading axes) and step; staying counts as a move to the same
    regime. Divided by its row sums it estimates the per-step transition matrix, e.g. to
    check ``dj.simulate`` against the model's ``transition``.

    Arguments:
        regimes: true regime index ``[..., T]``, integers in ``[0, num_regimes)``
            (``Paths.regimes``).
        num_regimes: ``M``, a Python int ``>= 1``.

    Returns:
        ``counts[i, j]``, the number of steps from regime ``i`` to regime ``j`` (int).

    Example:
        >>> import drift_jax as dj
        >>> dj.metrics.transition_counts([[0, 0, 1, 1], [1, 0, 0, 0]], 2).tolist()
        [[3, 1], [1, 1]]
    """
    num_regimes = v.positive_int("num_regimes", num_regimes)
    M = int(num_regimes)
    reg = v.check(
        "regimes",
        regime_path("regimes", regimes),
        lambda r: (r >= 0) & (r < M),
        f"regime indices in [0, num_regimes={M})",
    )
    moves = (reg[..., :-1] * M + reg[..., 1:]).ravel()
    return jnp.bincount(moves, length=M * M).reshape(M, M)
