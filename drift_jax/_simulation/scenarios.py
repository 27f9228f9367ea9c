"""Scripted scenarios: closed-form drift paths with their truth, for tests and Monte Carlo.

Each scenario is a deterministic *script* ``c(t)`` of the drift (bps/s) with true regime
labels (Quiet / Trending / Crisis, the names of ``dj.seed_imm``), plus a quiet background:

- drift ``mu_k = c(t_k) + x_k`` at ``t_k = (k + 1) dt`` (``cumsum(dt)`` for a ``[T]``
  ``dt``), where ``x`` is an OU path ``dx = -background_theta x dt + background_sigma dW``
  discretised exactly and started from its stationary law (from 0 when ``theta = 0``;
  ``background_sigma = 0`` switches it off, so ``mu_k = c(t_k)``);
- ``drift_rate_k = c'(t_k)``, the slope of the script (0 on flats and at jumps; the
  background has no derivative);
- features ``z_k = loadings * mu_k + v_k``, ``v_k ~ N(0, R)`` (the simulator's scalar
  observation ``H = loadings``), each feature missing (NaN) with ``missing_prob``;
- returns ``r_k = mu_k dt_k + return_vol[s_k] sqrt(dt_k) xi_k`` (bps), ``xi_k ~ N(0, 1)``.

A step is labelled by its end time ``t_k``: the step in which the fall of a cascade begins
is its first Crisis step.

Randomised variants: every shape parameter (``level``, ``start``, ...) is either a number
or a tuple ``(low, high)``, drawn per path uniformly between ``low`` and ``high``;
``randomised(name)`` gives the default Monte Carlo ranges. Reproducibility: path ``i``
draws everything (parameters and noise) from ``jax.random.fold_in(key, i)`` only, as
``dj.simulate`` does, so a path does not depend on ``n_paths``, the chunking or the
devices. The noise does not depend on the shape parameters either: two scenarios run with
the same key see the same background, feature noise and return noise (common random
numbers), which makes comparisons across parameter settings sharp.
"""

from __future__ import annotations

import inspect
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core import validate as v
from .._core.types import Array, Float
from .._models.observation import Observation
from .._models.presets import REGIME_NAMES
from .sharding import sample_in_chunks
from .simulate import Paths
from .synthetic import default_feature_cov, default_loadings

_QUIET, _TRENDING, _CRISIS = (REGIME_NAMES.index(n) for n in ("Quiet", "Trending", "Crisis"))

_FINITE = ("finite", math.isfinite)
_NONNEG = ("finite and >= 0", lambda x: math.isfinite(x) and x >= 0)
_POSITIVE = ("finite and > 0", lambda x: math.isfinite(x) and x > 0)

#: Shape parameters of each scenario, in draw order, with their allowed values.
_PARAMS = {
    "liquidation_cascade": {
        "level": _FINITE,
        "start": _NONNEG,
        "fall_time": _NONNEG,
        "hold_time": _NONNEG,
        "recovery_time": _NONNEG,
    },
    "reversal": {"level": _FINITE, "start": _NONNEG, "reversal_time": _NONNEG},
    "false_alarm": {"outlier_time": _NONNEG, "outlier_size": _FINITE},
    "slow_trend": {"level": _FINITE, "start": _NONNEG, "ramp_time": _NONNEG},
    "chop": {"amplitude": _FINITE, "period": _POSITIVE, "start": _NONNEG},
}

#: Monte Carlo ranges of ``randomised(name)``; each fits in the scenario's default length.
_RANGES = {
    "liquidation_cascade": {
        "level": (-80.0, -20.0),
        "start": (30.0, 120.0),
        "fall_time": (0.5, 3.0),
        "hold_time": (10.0, 60.0),
        "recovery_time": (10.0, 60.0),
    },
    "reversal": {"level": (10.0, 40.0), "start": (60.0, 140.0), "reversal_time": (0.5, 5.0)},
    "false_alarm": {"outlier_time": (10.0, 110.0), "outlier_size": (200.0, 2000.0)},
    "slow_trend": {"level": (5.0, 25.0), "start": (10.0, 60.0), "ramp_time": (30.0, 200.0)},
    "chop": {"amplitude": (2.0, 10.0), "period": (2.0, 30.0), "start": (0.0, 30.0)},
}

_WAVEFORMS = ("square", "sine")


def randomised(name: str) -> dict[str, tuple[float, float]]:
    """Default Monte Carlo ranges ``{parameter: (low, high)}`` of a scenario.

    Every range ends inside the scenario's default ``n_steps * dt``:

    - ``liquidation_cascade``: level -80..-20 bps/s, start 30..120 s, fall_time 0.5..3 s,
      hold_time 10..60 s, recovery_time 10..60 s (ends by 243 s of 300 s);
    - ``reversal``: level 10..40 bps/s (to minus that), start 60..140 s, reversal_time
      0.5..5 s (200 s series);
    - ``false_alarm``: outlier_time 10..110 s, outlier_size 200..2000 bps/s (120 s series);
    - ``slow_trend``: level 5..25 bps/s, start 10..60 s, ramp_time 30..200 s (300 s);
    - ``chop``: amplitude 2..10 bps/s, period (half-period) 2..30 s, start 0..30 s (300 s).

    Arguments:
        name: a key of ``SCENARIOS``.

    Returns:
        A new dict, to pass as keyword arguments (and to edit freely).

    Example:
        >>> import jax, drift_jax as dj
        >>> ranges = dj.scenarios.randomised("liquidation_cascade")
        >>> ranges["level"]
        (-80.0, -20.0)
        >>> paths = dj.scenarios.liquidation_cascade(jax.random.key(0), 4, **ranges)
        >>> paths.drift.shape
        (4, 3000)
    """
    v.one_of("name", name, tuple(_RANGES))
    return dict(_RANGES[name])


# --- scripts: c(t), c'(t) and the regime label at the times t [T] --------------------------


def _ramp(t, at, width):
    """``clip((t - at) / width, 0, 1)`` (a step at ``at`` when ``width = 0``) and its slope."""
    s = t - at
    wide = width > 0
    w = jnp.where(wide, width, 1.0)
    value = jnp.where(wide, jnp.clip(s / w, 0.0, 1.0), (s >= 0).astype(t.dtype))
    slope = jnp.where(wide & (s >= 0) & (s < width), 1.0 / w, 0.0)
    return value, slope


def _cascade_labels(t, t_prev, start, fall_time, hold_time, recovery_time, outside):
    """The cascade's true regimes at steps ``(t_prev, t]``, by the model's meaning of each
    regime: Crisis for a step that overlaps the fall ``[start, start + fall_time]`` (a
    fast-moving drift; a jump's own step when ``fall_time = 0``), Trending during the hold
    and the recovery (a drift away from 0 that moves slowly), ``outside`` elsewhere."""
    end_fall = start + fall_time
    end = end_fall + hold_time + recovery_time
    crisis = (t >= start) & (t_prev < end_fall)
    trending = (t >= end_fall) & (t < end) & ~crisis
    return jnp.where(crisis, _CRISIS, jnp.where(trending, _TRENDING, outside))


def _cascade(t, p, sim):
    c, rate, _ = _cascade_script(t, p)
    start = p["start"]
    t_prev = jnp.concatenate([jnp.zeros_like(t[:1]), t[:-1]])  # each step's start time
    label = _cascade_labels(
        t, t_prev, start, p["fall_time"], p["hold_time"], p["recovery_time"], _QUIET
    )
    return c, rate, label


def _reversal(t, p, sim):
    level, start, width = p["level"], p["start"], p["reversal_time"]
    turn, slope = _ramp(t, start, width)
    label = jnp.where((t >= start) & (t < start + width), _CRISIS, _TRENDING)
    return level - 2.0 * level * turn, -2.0 * level * slope, label


def _false_alarm(t, p, sim):
    zero = jnp.zeros_like(t)
    return zero, zero, jnp.full(t.shape, _QUIET)


def _slow_trend(t, p, sim):
    ramp, slope = _ramp(t, p["start"], p["ramp_time"])
    label = jnp.where(t < p["start"], _QUIET, _TRENDING)
    return p["level"] * ramp + 0.0, p["level"] * slope, label


def _chop(t, p, sim):
    amp, half, start = p["amplitude"], p["period"], p["start"]
    on = t >= start
    phase = jnp.pi * (t - start) / half
    if sim.waveform == "sine":
        c, rate = amp * jnp.sin(phase), amp * jnp.pi / half * jnp.cos(phase)
    else:
        up = jnp.floor((t - start) / half) % 2 == 0
        c, rate = amp * jnp.where(up, 1.0, -1.0), jnp.zeros_like(t)
    return jnp.where(on, c, 0.0), jnp.where(on, rate, 0.0), jnp.where(on, _TRENDING, _QUIET)


_SCRIPTS = {
    "liquidation_cascade": _cascade,
    "reversal": _reversal,
    "false_alarm": _false_alarm,
    "slow_trend": _slow_trend,
    "chop": _chop,
}


# --- the sampler ---------------------------------------------------------------------------


class ScenarioSimulator(eqx.Module):
    """A scenario's full specification without a key or a path count.

    ``sim.sample(key, start, count)`` draws paths ``start .. start + count - 1`` (path
    ``i`` from ``fold_in(key, i)``), so a Monte Carlo run can go chunk by chunk. Build it
    with ``dj.scenarios.simulator(name, ...)``; the scenario functions call it.
    """

    name: str = eqx.field(static=True)
    low: Float[Array, " P"]
    high: Float[Array, " P"]
    dt: Float[Array, "*T"]
    loadings: Float[Array, " m"]
    cov_chol: Float[Array, "m m"]
    background_theta: Float[Array, ""]
    background_sigma: Float[Array, ""]
    return_vol: Float[Array, " M"]
    missing_prob: Float[Array, " m"]
    num_steps: int = eqx.field(static=True)
    waveform: str = eqx.field(static=True, default="square")
    outlier_feature: int = eqx.field(static=True, default=-1)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(_PARAMS[self.name])

    def sample(self, key, start=0, count=1, *, chunk_size=None, devices=None, return_params=False):
        """Draw paths ``start .. start + count - 1``.

        Returns ``dj.Paths``, or ``(paths, params)`` with ``return_params=True`` where
        ``params`` maps each shape parameter to its ``[count]`` per-path values.
        ``chunk_size`` bounds how many paths are generated at once; ``devices`` (default:
        all) splits each chunk across devices. Neither changes the numbers.
        """
        key = v.prng_key("key", key)
        parts = sample_in_chunks(
            lambda ids: _sample_paths(self, key, ids), start, count, chunk_size, devices
        )
        paths = Paths.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        if not return_params:
            return paths
        values = jnp.concatenate([p[1] for p in parts], axis=0)
        return paths, {name: values[:, j] for j, name in enumerate(self.param_names)}


@eqx.filter_jit
def _sample_paths(sim: ScenarioSimulator, key, path_ids):
    out = jax.vmap(lambda i: _sample_one(sim, jax.random.fold_in(key, i)))(path_ids)
    regimes, drift, rate, features, returns, dts, values = out
    paths = Paths(regimes, drift, rate, features, returns, dts, REGIME_NAMES, _CRISIS, _QUIET)
    return paths, values


def _ou_background(theta, sigma, dts, z0, w):
    """Exact OU path at ``t_k`` from its stationary law at 0 (from 0 when ``theta = 0``).

    ``z0`` (a scalar) and ``w`` (``[T]``) are standard normal draws.
    """
    pos = theta > 0
    th = jnp.where(pos, theta, 1.0)
    a = jnp.exp(-theta * dts)
    var = jnp.where(pos, sigma**2 * -jnp.expm1(-2.0 * th * dts) / (2.0 * th), sigma**2 * dts)
    x0 = jnp.where(pos, sigma / jnp.sqrt(2.0 * th), 0.0) * z0
    b = jnp.sqrt(var) * w

    def step(x, ab):
        x = ab[0] * x + ab[1]
        return x, x

    return jax.lax.scan(step, x0, (a, b))[1]


def _sample_one(sim: ScenarioSimulator, key):
    dtype = sim.low.dtype
    T, m = sim.num_steps, sim.loadings.shape[0]
    k_par, k_noise = jax.random.split(key)
    values = sim.low + (sim.high - sim.low) * jax.random.uniform(k_par, sim.low.shape, dtype)
    params = dict(zip(sim.param_names, values, strict=True))
    if sim.dt.ndim == 0:
        dts = jnp.broadcast_to(sim.dt, (T,))
        t = sim.dt * jnp.arange(1, T + 1, dtype=dtype)
    else:
        dts, t = sim.dt, jnp.cumsum(sim.dt)
    script, rate, regimes = _SCRIPTS[sim.name](t, params, sim)
    # One flat block of standard normals: XLA:CPU compiles one flat draw several times
    # faster than a 2-d one or several draws (0.3 s against 2-3 s). Row 0 starts the
    # background; then per step m feature noises, the background's, the return's and m
    # more for the missing-data uniforms Phi(z).
    width = 2 * m + 2
    z = jax.random.normal(k_noise, ((T + 1) * width,), dtype).reshape(T + 1, width)
    background = _ou_background(sim.background_theta, sim.background_sigma, dts, z[0, 0], z[1:, m])
    drift = script + background
    noise = z[1:, :m] @ sim.cov_chol.T
    features = drift[:, None] * sim.loadings[None, :] + noise
    if sim.name == "false_alarm":
        after = t >= params["outlier_time"]
        hit = (jnp.arange(T) == jnp.argmax(after)) & after[-1]
        which = jnp.arange(m) == sim.outlier_feature if sim.outlier_feature >= 0 else True
        bump = params["outlier_size"] * sim.loadings * which
        features = features + jnp.where(hit[:, None], bump[None, :], 0.0)
    missing = jax.scipy.special.ndtr(z[1:, m + 2 :]) < sim.missing_prob[None, :]
    features = jnp.where(missing, jnp.nan, features)
    returns = drift * dts + sim.return_vol[regimes] * jnp.sqrt(dts) * z[1:, m + 1]
    return regimes.astype(jnp.int32), drift, rate, features, returns, dts, values


# --- building and checking ------------------------------------------------------------------


def _float_dtype(dtype):
    if dtype is None:
        return jnp.result_type(float)
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"`dtype` must be None or a float dtype, got dtype={dtype!r}.")
    return dt


def _shape_param(name: str, value, allowed: str, ok) -> tuple[float, float]:
    """``(low, high)`` of a shape parameter given as a number or a ``(low, high)`` range."""
    what = "a number or a (low, high) tuple"
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ValueError(f"`{name}` must be {what}, got {name}={value!r}.")
        low, high = (v.real(name, x, what) for x in value)
        if not (ok(low) and ok(high)):
            raise ValueError(f"`{name}` bounds must be {allowed}, got {name}={value!r}.")
        if low > high:
            raise ValueError(
                f"`{name}` must be a (low, high) range with low <= high, got {name}={value!r}."
            )
        return low, high
    x = v.real(name, value, what)
    if not ok(x):
        raise ValueError(f"`{name}` must be {allowed}, got {name}={value!r}.")
    return x, x


def _vector(name: str, value, size: int, dtype, allowed: str, ok, per: str) -> Array:
    arr = v.as_float_array(name, value, dtype)
    arr = jnp.full((size,), arr, dtype) if arr.ndim == 0 else arr
    if arr.shape != (size,):
        raise ValueError(
            f"`{name}` must be a scalar or one value per {per} (shape [{size}]), "
            f"got shape {arr.shape}."
        )
    return v.check(name, arr, ok, allowed)


def simulator(
    name: str,
    n_steps=None,
    dt=0.1,
    *,
    observation=None,
    background_theta=0.1,
    background_sigma=0.3,
    return_vol=(1.0, 1.5, 4.0),
    missing_prob=0.0,
    dtype=None,
    **params,
) -> ScenarioSimulator:
    """The scenario ``name`` as a ``ScenarioSimulator`` (arguments as the scenario's own).

    ``n_steps=None`` takes the scenario's default; ``params`` are its shape parameters
    (defaults as in its function) and, for ``chop``, ``waveform``, for ``false_alarm``,
    ``outlier_feature``.

    Example:
        >>> import jax, drift_jax as dj
        >>> sim = dj.scenarios.simulator("reversal", level=(10.0, 40.0))
        >>> first = sim.sample(jax.random.key(0), start=0, count=2)
        >>> rest = sim.sample(jax.random.key(0), start=2, count=3)
        >>> first.num_paths + rest.num_paths, first.num_steps
        (5, 2000)
    """
    v.one_of("name", name, tuple(SCENARIOS))
    defaults = _DEFAULTS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for scenario {name!r}; "
            f"its parameters are {sorted(defaults)}."
        )
    params = {**defaults, **params}
    T = v.positive_int("n_steps", _LENGTHS[name] if n_steps is None else n_steps)
    dtype = _float_dtype(dtype)
    dt_arr = v.positive("dt", dt, dtype)
    if dt_arr.ndim not in (0, 1) or (dt_arr.ndim == 1 and dt_arr.shape != (T,)):
        raise ValueError(
            f"`dt` must be a scalar or have shape [n_steps] = [{T}], got shape {dt_arr.shape}."
        )
    if observation is None:
        observation = Observation(default_loadings(), default_feature_cov())
    v.instance("observation", observation, Observation, "a dj.Observation")
    m = observation.num_features
    ranges = [_shape_param(p, params[p], *_PARAMS[name][p]) for p in _PARAMS[name]]
    low, high = (jnp.asarray([r[j] for r in ranges], dtype) for j in (0, 1))
    theta = v.scalar(
        "background_theta", v.nonnegative("background_theta", background_theta, dtype)
    )
    sigma = v.scalar(
        "background_sigma", v.nonnegative("background_sigma", background_sigma, dtype)
    )
    finite_nonneg = lambda x: jnp.isfinite(x) & (x >= 0)
    n_reg = len(REGIME_NAMES)
    vol = _vector(
        "return_vol", return_vol, n_reg, dtype, "finite and >= 0", finite_nonneg, "regime"
    )
    in_unit = lambda x: (x >= 0) & (x < 1)
    miss = _vector("missing_prob", missing_prob, m, dtype, "in [0, 1)", in_unit, "feature")
    waveform = v.one_of("waveform", params.get("waveform", "square"), _WAVEFORMS)
    feature = params.get("outlier_feature")
    if feature is None:
        feature = -1
    else:
        feature = v.integer(
            "outlier_feature",
            feature,
            f"None (every feature) or a feature index in [0, {m})",
            lambda i: 0 <= i < m,
        )
    return ScenarioSimulator(
        name,
        low,
        high,
        dt_arr,
        observation.loadings.astype(dtype),
        observation.cov_chol.astype(dtype),
        theta,
        sigma,
        vol,
        miss,
        T,
        waveform,
        int(feature),
    )


_SAMPLE_OPTIONS = ("chunk_size", "devices", "return_params")


def _run(name: str, key, n_paths, n_steps, dt, params: dict, options: dict):
    """Build the scenario from a scenario function's arguments and sample it."""
    sample = {k: options.pop(k) for k in _SAMPLE_OPTIONS if k in options}
    sim = simulator(name, n_steps, dt, **params, **options)
    return sim.sample(key, 0, n_paths, **sample)


_COMMON_DOC = """key: a JAX PRNG key; path ``i`` uses ``jax.random.fold_in(key, i)``.
        n_paths, n_steps: ``B`` and ``T`` (ints >= 1).
        dt: step length in seconds (> 0), a scalar or ``[T]``; ``t_k = (k + 1) dt``.
        observation: the ``dj.Observation`` of the features (default: the four default
            features, ``dj.scenarios.default_observation()``).
        background_theta: mean reversion of the background OU drift (1/s, >= 0; default
            0.1, the Quiet regime's).
        background_sigma: its diffusion (bps/s per sqrt(s), >= 0; default 0.3; 0 = off).
        return_vol: return volatility per true regime (bps/sqrt(s); scalar or
            ``[3]`` for Quiet, Trending, Crisis; default ``(1.0, 1.5, 4.0)``).
        missing_prob: probability that a feature is NaN at a step (scalar or ``[m]``,
            in ``[0, 1)``; default 0).
        dtype: float dtype of the paths (default: JAX's default float).
        chunk_size, devices: as in ``dj.simulate`` (bounded memory, several devices);
            the numbers do not depend on them.
        return_params: also return the per-path shape parameters.

    Every shape parameter above may be a number or a ``(low, high)`` tuple, drawn per
    path uniformly between ``low`` and ``high`` (``randomised(name)`` gives default
    ranges).

    Returns:
        ``dj.Paths`` (regime names Quiet / Trending / Crisis, ``crisis_index`` 2,
        ``quiet_index`` 0); with ``return_params=True`` a tuple ``(paths, params)``,
        ``params`` a dict of ``[n_paths]`` arrays, one per shape parameter."""


def _scenario(func):
    func.__doc__ = func.__doc__.replace("{common}", _COMMON_DOC)
    return func


# --- the scenarios ---------------------------------------------------------------------------


@_scenario
def liquidation_cascade(
    key,
    n_paths=1,
    n_steps=3000,
    dt=0.1,
    *,
    level=-50.0,
    start=60.0,
    fall_time=2.0,
    hold_time=40.0,
    recovery_time=30.0,
    **options,
):
    """A quiet market hit by a liquidation cascade: fall, hold, recovery.

    Script: 0 until ``start``, a linear fall to ``level`` over ``fall_time``, ``level``
    for ``hold_time``, a linear recovery to 0 over ``recovery_time``, then 0 (the profile
    of ``dj.scenarios.cascade_profile``). Truth, labelled with the regime whose dynamics
    each phase has (the model's Crisis is a fast-moving drift): Quiet before ``start``,
    Crisis during the fall (the steps that overlap ``[start, start + fall_time]``; a
    jump's own step when ``fall_time = 0``), Trending during the hold and the recovery
    (a drift far from 0 that moves slowly), Quiet after. So ``dj.metrics.recovery_time``
    measures how long ``P(Crisis)`` outlasts the fall, and ``detection_latency`` how soon
    it rises during the fall (an alarm after the fall has ended is a miss).

    Arguments:
        level: drift reached by the fall (bps/s, finite; default -50).
        start: time the fall begins (s, >= 0; default 60; beyond the end: no cascade).
        fall_time: duration of the fall (s, >= 0, 0 is a jump; default 2).
        hold_time: time at ``level`` (s, >= 0; default 40).
        recovery_time: duration of the linear recovery (s, >= 0; default 30).
        {common}

    Example:
        >>> import jax, drift_jax as dj
        >>> paths = dj.scenarios.liquidation_cascade(jax.random.key(0), 2, background_sigma=0.0)
        >>> paths.features.shape, float(paths.drift[0, 999])
        ((2, 3000, 4), -50.0)
        >>> [paths.regime_names[int(paths.regimes[0, k])] for k in (0, 610, 700, 1100, 1400)]
        ['Quiet', 'Crisis', 'Trending', 'Trending', 'Quiet']
    """
    params = dict(
        level=level,
        start=start,
        fall_time=fall_time,
        hold_time=hold_time,
        recovery_time=recovery_time,
    )
    return _run("liquidation_cascade", key, n_paths, n_steps, dt, params, options)


@_scenario
def reversal(
    key, n_paths=1, n_steps=2000, dt=0.1, *, level=20.0, start=100.0, reversal_time=2.0, **options
):
    """A trend that reverses: the drift moves linearly from ``level`` to ``-level``.

    Script: ``level`` until ``start``, linear to ``-level`` over ``reversal_time``, then
    ``-level``. Truth: Trending, except Crisis while the drift moves (``start <= t <
    start + reversal_time``, no step when the reversal is a jump): a move of ``2 level``
    within seconds is what the Crisis regime's dynamics describe, and the Crisis onset
    marks the reversal for ``dj.metrics.reversal_recovery_time``.

    Arguments:
        level: the drift before the reversal (bps/s, finite; default 20).
        start: time the reversal begins (s, >= 0; default 100).
        reversal_time: duration of the move (s, >= 0, 0 is a jump; default 2).
        {common}

    Example:
        >>> import jax, drift_jax as dj
        >>> paths = dj.scenarios.reversal(jax.random.key(0), background_sigma=0.0)
        >>> float(paths.drift[0, 500]), float(paths.drift[0, 1500])
        (20.0, -20.0)
    """
    params = dict(level=level, start=start, reversal_time=reversal_time)
    return _run("reversal", key, n_paths, n_steps, dt, params, options)


@_scenario
def false_alarm(
    key,
    n_paths=1,
    n_steps=1200,
    dt=0.1,
    *,
    outlier_time=60.0,
    outlier_size=1000.0,
    outlier_feature=None,
    **options,
):
    """A quiet market with a single huge outlier in the features.

    Script: 0 (the drift is the background alone). Truth: Quiet throughout. At the first
    step with ``t_k >= outlier_time`` (none if it is beyond the end) the features get
    ``outlier_size * loadings`` added (as if the drift were ``outlier_size`` higher for one
    step); only feature ``outlier_feature`` when it is given. Returns are not touched.

    Arguments:
        outlier_time: time of the outlier (s, >= 0; default 60).
        outlier_size: its size in drift units (bps/s, finite, any sign; default 1000).
        outlier_feature: ``None`` (every feature, default) or the index of the one feature
            hit (a fixed int, not a range).
        {common}

    Example:
        >>> import jax, drift_jax as dj
        >>> paths = dj.scenarios.false_alarm(jax.random.key(0))
        >>> bool(paths.features[0, 599, 0] > 500), bool(abs(paths.features[0, 600, 0]) < 100)
        (True, True)
    """
    params = dict(
        outlier_time=outlier_time, outlier_size=outlier_size, outlier_feature=outlier_feature
    )
    return _run("false_alarm", key, n_paths, n_steps, dt, params, options)


@_scenario
def slow_trend(
    key, n_paths=1, n_steps=3000, dt=0.1, *, level=10.0, start=30.0, ramp_time=120.0, **options
):
    """A trend that builds slowly: the drift ramps linearly from 0 to ``level``.

    Script: 0 until ``start``, linear to ``level`` over ``ramp_time``, then ``level``.
    Truth: Quiet before ``start``, Trending from ``start`` on.

    Arguments:
        level: the final drift (bps/s, finite; default 10).
        start: time the ramp begins (s, >= 0; default 30).
        ramp_time: duration of the ramp (s, >= 0; default 120).
        {common}

    Example:
        >>> import jax, drift_jax as dj
        >>> paths = dj.scenarios.slow_trend(jax.random.key(0), background_sigma=0.0)
        >>> mid, end = paths.drift[0, 899], paths.drift[0, 2999]
        >>> round(float(mid), 4), float(end), round(float(paths.drift_rate[0, 899]), 4)
        (5.0, 10.0, 0.0833)
    """
    params = dict(level=level, start=start, ramp_time=ramp_time)
    return _run("slow_trend", key, n_paths, n_steps, dt, params, options)


@_scenario
def chop(
    key,
    n_paths=1,
    n_steps=3000,
    dt=0.1,
    *,
    amplitude=5.0,
    period=10.0,
    start=0.0,
    waveform="square",
    **options,
):
    """A choppy market: frequent small reversals of the drift around 0.

    Script: 0 until ``start``, then a wave of amplitude ``amplitude`` that changes sign
    every ``period`` seconds: ``"square"`` (``+amplitude`` for ``period`` seconds, then
    ``-amplitude``, ...) or ``"sine"`` (``amplitude sin(pi (t - start) / period)``).
    Truth: Quiet before ``start``, Trending from ``start`` on (never Crisis).

    Arguments:
        amplitude: the wave's amplitude (bps/s, finite; default 5).
        period: the half-period, seconds between sign changes (> 0; default 10).
        start: time the chop begins (s, >= 0; default 0).
        waveform: ``"square"`` (default) or ``"sine"`` (fixed, not a range).
        {common}

    Example:
        >>> import jax, drift_jax as dj
        >>> paths = dj.scenarios.chop(jax.random.key(0), background_sigma=0.0)
        >>> float(paths.drift[0, 49]), float(paths.drift[0, 149])
        (5.0, -5.0)
    """
    params = dict(amplitude=amplitude, period=period, start=start, waveform=waveform)
    return _run("chop", key, n_paths, n_steps, dt, params, options)


#: Every scenario function by name.
SCENARIOS = {
    "liquidation_cascade": liquidation_cascade,
    "reversal": reversal,
    "false_alarm": false_alarm,
    "slow_trend": slow_trend,
    "chop": chop,
}

#: Defaults of each scenario's parameters (shape parameters and fixed settings).
_DEFAULTS = {
    name: {
        p.name: p.default
        for p in inspect.signature(func).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    }
    for name, func in SCENARIOS.items()
}
_LENGTHS = {
    name: inspect.signature(func).parameters["n_steps"].default for name, func in SCENARIOS.items()
}


# --- scripted events on a regime-switching background ---------------------------------------


def cascade_on_background(
    model,
    key,
    n_paths=1,
    n_steps=3000,
    dt=0.1,
    *,
    level=-50.0,
    start=60.0,
    fall_time=2.0,
    hold_time=40.0,
    recovery_time=30.0,
    **simulate_options,
) -> Paths:
    """A liquidation cascade scripted on top of paths simulated from ``model``.

    The background is ``dj.simulate(model, key, n_paths, n_steps, dt, **simulate_options)``:
    a regime-switching drift with the model's own regimes, features and returns, and any
    of ``dj.simulate``'s options (``sampling="poisson"``: each path its own Poisson
    arrival times, mean gap ``dt``; ``missing_prob``, ``return_vol``, jumps). Onto each
    path, at its own times ``t_k`` (``paths.times``), the cascade's script ``c(t)``
    (``dj.scenarios.cascade_profile``) is added: ``drift += c``, ``drift_rate += c'``,
    ``features += loadings * c`` (a missing feature stays missing), ``returns += c dt``.
    The truth inside the script is labelled as ``liquidation_cascade`` labels it (Crisis
    for the steps that overlap the fall, the model's "Trending" regime during the hold
    and the recovery, when it has one), the background's regime elsewhere.

    Arguments:
        model: the background's ``dj.IMMModel`` (or ``dj.KalmanModel``); its crisis
            regime labels the fall.
        key, n_paths, n_steps, dt: as ``dj.simulate``'s.
        level, start, fall_time, hold_time, recovery_time: the script (as
            ``liquidation_cascade``'s), each a number or ``[n_paths]`` (one per path).
        simulate_options: passed to ``dj.simulate``.

    Returns:
        ``dj.Paths`` with the model's regime names.

    Example:
        >>> import jax, drift_jax as dj
        >>> imm = dj.seed_imm(dj.scenarios.default_observation())
        >>> paths = dj.scenarios.cascade_on_background(imm, jax.random.key(0), 2, 1000, 0.1,
        ...                                            start=50.0)
        >>> paths.regime_names[int(paths.regimes[0, 505])], float(paths.drift_rate[0, 505])
        ('Crisis', -25.0)
        >>> poisson = dj.scenarios.cascade_on_background(  # each path its own arrival times
        ...     imm, jax.random.key(0), 2, 1000, 0.1, start=50.0, sampling="poisson")
        >>> bool(poisson.times[0, 500] != poisson.times[1, 500])
        True
    """
    from .simulate import simulate

    background = simulate(model, key, n_paths, n_steps, dt, **simulate_options)
    dtype = background.drift.dtype
    B = background.num_paths
    shape = {}
    for name, value in (
        ("level", level),
        ("start", start),
        ("fall_time", fall_time),
        ("hold_time", hold_time),
        ("recovery_time", recovery_time),
    ):
        arr = v.as_float_array(name, value, dtype)
        if arr.ndim == 0:
            arr = jnp.full((B,), arr, dtype)
        if arr.shape != (B,):
            raise ValueError(
                f"`{name}` must be a number or one per path (shape [n_paths] = [{B}]), got "
                f"shape {arr.shape}."
            )
        allowed, ok = _PARAMS["liquidation_cascade"][name]
        vals = np.asarray(arr, dtype=np.float64)
        if not all(ok(float(x)) for x in vals):
            raise ValueError(f"`{name}` must be {allowed}; got {name}={vals.tolist()}.")
        shape[name] = arr[:, None]
    t = background.times
    t_prev = jnp.concatenate([jnp.zeros_like(t[:, :1]), t[:, :-1]], axis=1)
    c, rate, _ = _cascade_script(t, shape)
    names = background.regime_names
    crisis = background.crisis_index
    trending = names.index("Trending") if "Trending" in names else -1
    script_label = _cascade_labels(
        t,
        t_prev,
        shape["start"],
        shape["fall_time"],
        shape["hold_time"],
        shape["recovery_time"],
        -1,
    )
    regimes = background.regimes
    if trending >= 0:
        regimes = jnp.where(script_label == _TRENDING, trending, regimes)
    if crisis >= 0:
        regimes = jnp.where(script_label == _CRISIS, crisis, regimes)
    loadings = model.observation.loadings.astype(dtype)
    return Paths(
        regimes.astype(jnp.int32),
        background.drift + c,
        background.drift_rate + rate,
        background.features + c[..., None] * loadings[None, None, :],
        background.returns + c * background.dt,
        background.dt,
        names,
        background.crisis_index,
        background.quiet_index,
    )


def _cascade_script(t, p):
    """``c(t)`` and ``c'(t)`` of the cascade (parameters broadcast against ``t``)."""
    level, start = p["level"], p["start"]
    fall, fall_slope = _ramp(t, start, p["fall_time"])
    end_hold = start + p["fall_time"] + p["hold_time"]
    rise, rise_slope = _ramp(t, end_hold, p["recovery_time"])
    # + 0.0: no -0.0 before the fall
    return level * fall - level * rise + 0.0, level * (fall_slope - rise_slope), None
