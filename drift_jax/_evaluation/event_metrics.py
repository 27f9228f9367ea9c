"""Event timing metrics: crisis detection latency, tracking latency, recovery, false alarms.

Paths have time as the LAST axis (``[..., T]``, leading batch axes broadcast), as in
``_evaluation/metrics.py``. Step ``k`` covers ``(t_{k-1}, t_k]`` with ``t_k = cumsum(dt)``;
a latency is ``t_j - t_k0``, so an event seen at its own onset step has latency 0.

Episodes: an episode of regime ``r`` starts at a step ``k0`` with ``regimes[k0] == r`` and
``regimes[k0 - 1] != r`` (step 0 is an onset only with ``include_start=True``) and lasts
while the regime stays ``r``.

What the metrics measure depends on what the true labels mean, and they read true only
when the labels mean what the model's regimes mean: the model's Crisis is a fast-moving
drift (``sigma`` 5 bps/s per sqrt(s) in ``dj.seed_imm``), so a crisis episode is the fast
move itself. ``dj.scenarios`` labels that way (a cascade's fall is Crisis, its flat hold
Trending): ``detection_latency`` is then how soon ``P(Crisis)`` rises during the move
and ``recovery_time`` how long it outlasts it. Labelling a flat hold Crisis (as the
scenarios once did) makes ``recovery_time`` read 0 (the filter's P(Crisis) has fallen
during the hold, long before the label ends) and lets a late alarm count as detected.

The per-event functions return a path ``[..., T]`` that holds the latency at each event
step, NaN at the other steps and ``+inf`` for an event whose target is never reached in
its window; ``summarise_latencies`` turns such arrays into counts and quantiles. Nothing
here loops over time in Python: "the first step at or after ``k`` where something
happens" is a segmented ``lax.scan`` run backwards in time, so every function works under
``jit`` and ``vmap`` in O(T) work.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._core.ordered_sum import ordered_sum
from .._core.types import Array, Bool, Float, Int, ScalarLike
from .metrics import (
    AxisLike,
    MaskLike,
    PathLike,
    RegimesLike,
    bounded,
    broadcast,
    index,
    mask,
    path,
    probability,
    regime_path,
    step_lengths,
)
from .segments import (
    fill_forward,
    segmented_scan,
    shift_left,
    shift_right,
    time_to_event,
)

SECONDS_PER_HOUR = 3600.0


# --- episodes -------------------------------------------------------------------------------


def regime_onsets(
    regimes: RegimesLike, regime: int | None = None, *, include_start: bool = False
) -> Bool[Array, "..."]:
    """Steps at which an episode of ``regime`` starts (any regime switch if ``None``).

    Arguments:
        regimes: true regime index ``[..., T]``.
        regime: the regime index, or ``None`` for every switch ``regimes[k] != regimes[k-1]``.
        include_start: count step 0 as an onset (of the regime it starts in).

    Returns:
        A boolean mask ``[..., T]``, usable as ``onsets`` of ``tracking_latency``.

    Example:
        >>> import drift_jax as dj
        >>> dj.metrics.regime_onsets([0, 2, 2, 0, 2], 2).tolist()
        [False, True, False, False, True]
    """
    reg = regime_path("regimes", regimes)
    if regime is None:
        onset = reg != shift_right(reg, 0)
        return onset.at[..., 0].set(include_start)
    inside = reg == index("regime", regime)
    return inside & ~shift_right(inside, not include_start)


def _event_inputs(p_crisis, regimes, dt, threshold):
    thr = probability("threshold", threshold)
    p, reg, dtv = broadcast(
        p_crisis=path("p_crisis", p_crisis),
        regimes=regime_path("regimes", regimes),
        dt=step_lengths(dt),
    )
    return p, reg, dtv.astype(p.dtype), thr


def detection_latency(
    p_crisis: PathLike,
    regimes: RegimesLike,
    dt: PathLike | float,
    *,
    crisis_index: int,
    threshold: ScalarLike = 0.3,
    include_start: bool = False,
) -> Float[Array, "..."]:
    """Time from each crisis onset until the filter's ``P(Crisis)`` exceeds ``threshold``.

    At an onset step ``k0`` of the crisis regime: ``t_j - t_k0`` for the first ``j >= k0``
    with ``p_crisis[j] > threshold`` inside the episode; ``+inf`` (missed) when the alarm
    does not come before the episode ends. NaN at every other step.

    Arguments:
        p_crisis: the filter's ``P(Crisis)`` after each step ``[..., T]`` (NaN is "no
            alarm").
        regimes: true regime index ``[..., T]``.
        dt: seconds per step (a scalar or ``[..., T]``), ``>= 0``.
        crisis_index: index of the crisis regime.
        threshold: alarm level in ``[0, 1]`` (the specification's 0.3).
        include_start: a path that starts in crisis has an onset at step 0.

    Returns:
        Latencies in seconds ``[..., T]``.

    Example:
        >>> import drift_jax as dj
        >>> lat = dj.metrics.detection_latency(
        ...     [0.0, 0.1, 0.2, 0.5, 0.9, 0.1, 0.0], [0, 0, 2, 2, 2, 0, 0], 0.5,
        ...     crisis_index=2)
        >>> lat.tolist()
        [nan, nan, 0.5, nan, nan, nan, nan]
    """
    p, reg, dtv, thr = _event_inputs(p_crisis, regimes, dt, threshold)
    ci = index("crisis_index", crisis_index)
    return _detection(p, reg, dtv, ci, thr, include_start=bool(include_start))


# The kernels are jitted so that eager calls compile once per shape instead of dispatching
# every small op of the scans; inside a user's jit or vmap they simply inline.
@functools.partial(jax.jit, static_argnames="include_start")
def _detection(p, reg, dt, crisis_index, thr, *, include_start: bool):
    crisis = reg == crisis_index
    onset = crisis & ~shift_right(crisis, not include_start)
    last = ~crisis | ~shift_left(crisis, False)
    latency = time_to_event(crisis & (p > thr), last, dt)
    return jnp.where(onset, latency, jnp.nan)


def recovery_time(
    p_crisis: PathLike,
    regimes: RegimesLike,
    dt: PathLike | float,
    *,
    crisis_index: int,
    threshold: ScalarLike = 0.3,
) -> Float[Array, "..."]:
    """Time from the end of each crisis episode until ``P(Crisis)`` is back at or below
    ``threshold``: how long the alarm outlasts the crisis (0 when it has already ended).

    At a step ``k1`` with ``regimes[k1-1] == crisis != regimes[k1]``: ``t_j - t_k1`` for the
    first ``j >= k1`` with ``p_crisis[j] <= threshold`` (0 if it already is), ``+inf``
    when that does not happen before the next crisis onset (or the end of the path). NaN
    at every other step.

    Arguments:
        p_crisis: the filter's ``P(Crisis)`` ``[..., T]``.
        regimes: true regime index ``[..., T]``.
        dt: seconds per step (a scalar or ``[..., T]``).
        crisis_index: index of the crisis regime.
        threshold: alarm level in ``[0, 1]``.

    Example:
        >>> import drift_jax as dj
        >>> dj.metrics.recovery_time([0.0, 0.9, 0.9, 0.6, 0.2, 0.1], [0, 2, 2, 0, 0, 0], 0.25,
        ...                          crisis_index=2).tolist()
        [nan, nan, nan, 0.25, nan, nan]
    """
    p, reg, dtv, thr = _event_inputs(p_crisis, regimes, dt, threshold)
    return _recovery(p, reg, dtv, index("crisis_index", crisis_index), thr)


@jax.jit
def _recovery(p, reg, dt, crisis_index, thr):
    crisis = reg == crisis_index
    end = ~crisis & shift_right(crisis, False)
    last = crisis | shift_left(crisis, False)
    time = time_to_event(~crisis & (p <= thr), last, dt)
    return jnp.where(end, time, jnp.nan)


# --- tracking -------------------------------------------------------------------------------


def _keep_larger_deviation(a, b):
    """The signed deviation of larger size; ``a`` is the earlier step, and wins ties."""
    return jnp.where(jnp.abs(a) >= jnp.abs(b), a, b)


def tracking_latency(
    estimate: PathLike,
    truth: PathLike,
    onsets: MaskLike,
    dt: PathLike | float,
    *,
    fraction: ScalarLike = 0.9,
    horizon: ScalarLike | None = None,
) -> Float[Array, "..."]:
    """Time from each event until the estimate has covered ``fraction`` of the true move.

    For an event at step ``k0`` (``onsets[k0]``: a regime switch, a scripted cascade start):
    the baseline is ``b = truth[k0-1]`` (``truth[0]`` when ``k0 = 0``); the window runs
    from ``k0`` up to the next event (or ``horizon`` seconds after ``t_k0``, or the end);
    the target level ``L`` is the truth in the window furthest from ``b`` (the first one
    on a tie). The latency is ``t_j - t_k0`` for the first ``j`` in the window with
    ``(estimate[j] - b) / (L - b) >= fraction``; ``+inf`` if there is none, NaN when the
    truth does not move in the window (``L == b``) and at steps without an event.

    Arguments:
        estimate: filtered drift ``[..., T]`` (NaN steps never count as reached).
        truth: true drift ``[..., T]``.
        onsets: boolean mask of event steps ``[..., T]`` (e.g. ``regime_onsets``).
        dt: seconds per step (a scalar or ``[..., T]``).
        fraction: share of the move to cover, in ``(0, 1]``: 0.5 and 0.9 are usual.
        horizon: optional window length in seconds, ``> 0``.

    Example:
        >>> import drift_jax as dj
        >>> truth = [0.0, 0.0, -8.0, -8.0, -8.0, -8.0]
        >>> est = [0.0, 0.0, -2.0, -4.0, -6.0, -8.0]
        >>> onsets = [False, False, True, False, False, False]
        >>> dj.metrics.tracking_latency(est, truth, onsets, 0.5, fraction=0.5).tolist()
        [nan, nan, 0.5, nan, nan, nan]
    """
    frac = bounded("fraction", fraction, lambda x: (x > 0) & (x <= 1), "in (0, 1]")
    if horizon is None:
        horizon = jnp.inf
    else:
        horizon = bounded("horizon", horizon, lambda x: jnp.isfinite(x) & (x > 0), "> 0")
    est, tru, ons, dtv = broadcast(
        estimate=path("estimate", estimate),
        truth=path("truth", truth),
        onsets=mask("onsets", onsets),
        dt=step_lengths(dt),
    )
    return _tracking(est, tru, ons, dtv.astype(est.dtype), frac, horizon)


@jax.jit
def _tracking(est, tru, ons, dt, frac, horizon):
    return tracking_latencies(est, tru, ons, dt, (frac,), horizon)[0]


def tracking_latencies(est, tru, ons, dt, fractions: tuple, horizon=jnp.inf) -> list:
    """``tracking_latency`` for several fractions at once (checked inputs, traceable): the
    event windows and target levels are computed once and shared."""
    base = fill_forward(jnp.concatenate([tru[..., :1], tru[..., :-1]], axis=-1), ons)
    since = segmented_scan(jnp.add, jnp.where(ons, 0, dt), ons, reverse=False)
    window = (jnp.cumsum(ons, axis=-1) > 0) & (since <= horizon)  # at or after an event
    # Windows are prefixes of the stretches between events, so "last step of a window" is
    # known locally and the reverse scans never cross into the next event's window.
    last = ~window | shift_left(~window | ons, True)
    # The move is the signed deviation from the baseline of largest size in the window (one
    # array in the scan's carry, not a (size, value) pair: ~4x cheaper on CPU).
    dev = jnp.where(window, tru - base, 0)
    move = fill_forward(segmented_scan(_keep_larger_deviation, dev, last, reverse=True), ons)
    progress = (est - base) * jnp.sign(move)
    out = []
    for frac in fractions:
        reached = window & (move != 0) & (progress >= frac * jnp.abs(move))
        latency = time_to_event(reached, last, dt)
        out.append(jnp.where(ons & (move != 0), latency, jnp.nan))
    return out


def reversal_recovery_time(
    estimate: PathLike,
    truth: PathLike,
    onsets: MaskLike,
    dt: PathLike | float,
    *,
    fraction: ScalarLike = 0.5,
    horizon: ScalarLike | None = None,
) -> Float[Array, "..."]:
    """Time for the estimate to follow a reversal: ``tracking_latency`` at reversal events.

    A reversal is an event like any other: its baseline is the drift just before it (the
    shocked level) and its target the drift it recovers to, so this is
    ``tracking_latency(estimate, truth, onsets, dt, fraction=fraction, horizon=horizon)``
    with ``onsets`` marking the reversal steps and a default of half the move.

    Example:
        >>> import drift_jax as dj
        >>> truth = [-8.0, -8.0, 0.0, 0.0, 0.0]
        >>> est = [-8.0, -8.0, -6.0, -4.0, -2.0]
        >>> onsets = [False, False, True, False, False]
        >>> dj.metrics.reversal_recovery_time(est, truth, onsets, 1.0).tolist()
        [nan, nan, 1.0, nan, nan]
    """
    return tracking_latency(estimate, truth, onsets, dt, fraction=fraction, horizon=horizon)


# --- false alarms ---------------------------------------------------------------------------


def _quiet_alarms(p_crisis, regimes, dt, quiet_index, threshold):
    p, reg, dtv, thr = _event_inputs(p_crisis, regimes, dt, threshold)
    return _quiet_alarm_steps(p, reg, dtv, index("quiet_index", quiet_index), thr)


@jax.jit
def _quiet_alarm_steps(p, reg, dt, quiet_index, thr):
    alarm = p > thr  # NaN is "no alarm", as in dj.is_crisis
    rising = alarm & ~shift_right(alarm, False)
    quiet = reg == quiet_index
    return rising & quiet, alarm & quiet, jnp.where(quiet, dt, 0)


def false_alarm_rate(
    p_crisis: PathLike,
    regimes: RegimesLike,
    dt: PathLike | float,
    *,
    quiet_index: int,
    threshold: ScalarLike = 0.3,
) -> tuple[Int[Array, "..."], Float[Array, "..."]]:
    """Crisis alarms raised while the market is truly quiet, and the quiet time, per path.

    An alarm is raised at ``k`` when ``p_crisis[k] > threshold`` and not at ``k - 1``
    (always at ``k = 0`` if above); it is false when ``regimes[k] == quiet_index``. An
    alarm raised in another regime that lasts into a quiet stretch is not counted here
    (``alarm_time_fraction`` sees it). The rate over a Monte Carlo study is
    ``sum(alarms) / sum(quiet_hours)`` per hour (``false_alarm_rate_per_hour``).

    Arguments:
        p_crisis: the filter's ``P(Crisis)`` ``[..., T]`` (NaN is "no alarm").
        regimes: true regime index ``[..., T]``.
        dt: seconds per step (a scalar or ``[..., T]``).
        quiet_index: index of the quiet regime.
        threshold: alarm level in ``[0, 1]``.

    Returns:
        ``(alarms [...], quiet_hours [...])``: counts of false alarms and hours spent in
        the quiet regime (each step weighs its ``dt``).

    Example:
        >>> import drift_jax as dj
        >>> alarms, hours = dj.metrics.false_alarm_rate(
        ...     [0.0, 0.5, 0.5, 0.1, 0.4, 0.1], [0, 0, 0, 0, 0, 0], 900.0, quiet_index=0)
        >>> int(alarms), float(hours)
        (2, 1.5)
    """
    rising, _, quiet_dt = _quiet_alarms(p_crisis, regimes, dt, quiet_index, threshold)
    return jnp.sum(rising, axis=-1), ordered_sum(quiet_dt, axis=-1) / SECONDS_PER_HOUR


def _ratio(num: Array, den: Array) -> Array:
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), jnp.nan)


def false_alarm_rate_per_hour(
    p_crisis: PathLike,
    regimes: RegimesLike,
    dt: PathLike | float,
    *,
    quiet_index: int,
    threshold: ScalarLike = 0.3,
    axis: AxisLike = None,
) -> Float[Array, "..."]:
    """False alarms per hour of quiet market, ``sum(alarms) / sum(quiet_hours)``.

    Pools over ``axis`` of the ``[..., T]`` inputs (``None``: all paths and steps); NaN
    when no quiet time is included. See ``false_alarm_rate`` for the definitions.

    Example:
        >>> import drift_jax as dj
        >>> float(dj.metrics.false_alarm_rate_per_hour(
        ...     [0.0, 0.5, 0.5, 0.1, 0.4, 0.1], [0, 0, 0, 0, 0, 0], 900.0, quiet_index=0))
        1.3333333...
    """
    rising, _, quiet_dt = _quiet_alarms(p_crisis, regimes, dt, quiet_index, threshold)
    hours = jnp.sum(quiet_dt, axis=axis) / SECONDS_PER_HOUR
    return _ratio(jnp.sum(rising, axis=axis).astype(hours.dtype), hours)


def alarm_time_fraction(
    p_crisis: PathLike,
    regimes: RegimesLike,
    dt: PathLike | float,
    *,
    quiet_index: int,
    threshold: ScalarLike = 0.3,
    axis: AxisLike = None,
) -> Float[Array, "..."]:
    """Share of the truly quiet time during which ``P(Crisis) > threshold``.

    Step ``k`` weighs its own ``dt_k``. Pools over ``axis`` (``None``: all); NaN when no
    quiet time is included.

    Example:
        >>> import drift_jax as dj
        >>> float(dj.metrics.alarm_time_fraction(
        ...     [0.0, 0.5, 0.5, 0.9], [0, 0, 0, 2], 1.0, quiet_index=0))
        0.6666666...
    """
    _, alarm, quiet_dt = _quiet_alarms(p_crisis, regimes, dt, quiet_index, threshold)
    alarm_time = jnp.sum(jnp.where(alarm, quiet_dt, 0), axis=axis)
    return _ratio(alarm_time, jnp.sum(quiet_dt, axis=axis))


# --- summary --------------------------------------------------------------------------------


def summarise_latencies(latencies: PathLike) -> dict:
    """Counts and quantiles of a latency array (NumPy; not for ``jit``).

    NaN entries are "no event here" and are dropped; ``+inf`` entries are events whose
    target was never reached (missed).

    Returns:
        A dict with ``episodes`` (events), ``detected`` (finite latencies),
        ``detected_fraction``, and the ``median``, ``p90`` and ``mean`` of the finite
        latencies in seconds (NaN when there are none).

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> s = dj.metrics.summarise_latencies([np.nan, 1.0, np.inf, 3.0, np.nan])
        >>> s["episodes"], s["detected"], s["median"]
        (3, 2, 2.0)
    """
    lat = np.asarray(latencies, dtype=np.float64).ravel()
    bad = ~np.isnan(lat) & ~(lat >= 0)
    if np.any(bad):
        raise ValueError(
            "`latencies` must be >= 0, +inf (missed) or NaN (no event); "
            f"got latencies with {lat[bad][:5].tolist()}."
        )
    events = lat[~np.isnan(lat)]
    found = events[np.isfinite(events)]
    some = found.size > 0
    return {
        "episodes": int(events.size),
        "detected": int(found.size),
        "detected_fraction": float(found.size / events.size) if events.size else float("nan"),
        "median": float(np.median(found)) if some else float("nan"),
        "p90": float(np.quantile(found, 0.9)) if some else float("nan"),
        "mean": float(np.mean(found)) if some else float("nan"),
    }
