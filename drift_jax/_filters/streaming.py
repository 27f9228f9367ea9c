"""Step-at-a-time estimators with the specification's interface.

Each call runs one jitted step -- the model's own ``cycle``, the same cycle ``dj.filter``
scans (for an IMM with a scalar state the scalar cycle, with several features reduced
exactly to one as the filter does) -- and returns a new estimator; estimators are
immutable, so a state can be kept, compared or replayed. An estimator saves to a file and
restores with a bit-identical continuation.

The compiled cycle is cached per model *structure* (classes, sizes, dtype, static fields
such as ``feature_names``), not per model: a second estimator of the same shape, or the same
model with other parameter values, runs without compiling again. ``dj.streaming_step(model)``
(also ``estimator.step_fn``) is the same cycle as a pure function ``(state, z, dt) ->
(state, dj.StepOutputs)`` for ``jit`` / ``vmap`` / ``lax.scan``. ``update_observation(z,
t=...)`` takes a timestamp instead of a step length (``dt = t - last t``; equal timestamps are
``dt = 0`` steps, an update with no prediction, as in ``dj.filter``), and
``from_result`` starts an estimator where a batch ``dj.filter`` run ended.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core import validate as v
from .._core.inputs import DT_ALLOWED, features_in_order, is_named
from .._core.types import Array, Float, Int, Scalar
from .._models.model import AbstractDriftModel, check_model
from .._models.risk import is_crisis as _is_crisis, sigma_effective as _sigma_effective
from .forecast import Forecast, forecast as _forecast
from .imm import IMMModel, IMMState
from .kalman import KalmanModel, KalmanState


def _as_dt(dt) -> np.ndarray:
    try:
        if dt is None or isinstance(dt, bool | np.bool_ | str | bytes):
            raise TypeError
        arr = np.asarray(dt, dtype=np.float64)
    except (TypeError, ValueError):
        raise v.ArgumentTypeError(
            f"`dt` must be a scalar step length in seconds (a number), got dt={dt!r}."
        ) from None
    if arr.ndim != 0:
        raise ValueError(f"`dt` must be a scalar step length in seconds, got shape {arr.shape}.")
    if not (np.isfinite(arr) and arr >= 0):
        raise ValueError(f"`dt` must be {DT_ALLOWED}, got dt={float(arr)!r}.")
    return arr


def _as_obs(name: str, z, m: int, names=None) -> np.ndarray:
    if hasattr(z, "items") and hasattr(z, "index") and not is_named(z):  # a pandas Series
        z = dict(z.items())
    if is_named(z):  # matched by name to the model's feature_names
        if isinstance(z, dict):
            z = {k: np.reshape(np.asarray(x, dtype=np.float64), (1,)) for k, x in z.items()}
        return features_in_order(z, names, m, name).reshape(-1)
    if isinstance(z, str | bytes) or z is None:
        raise v.ArgumentTypeError(
            f"`{name}` must be {m} feature value(s) (numbers; NaN = missing), got {z!r}."
        )
    arr = np.asarray(z, dtype=np.float64).reshape(-1)
    if arr.shape != (m,):
        raise ValueError(
            f"`{name}` must hold {m} feature value(s) (the observation model's width), "
            f"got shape {np.shape(z)}."
        )
    if np.any(np.isinf(arr)):
        raise ValueError(
            f"`{name}` must not contain +-inf (NaN marks a missing feature), got {arr.tolist()}."
        )
    return arr


def _vector_observation(z_vec, h_vec, r_mat, state_dim: int, update: str):
    """Validate the arguments of ``update_vector`` and build ``(z, H, R)``."""
    h = np.asarray(h_vec, dtype=np.float64).reshape(-1)
    k = h.shape[0]
    z = _as_obs("z_vec", z_vec, k)
    R = np.asarray(r_mat, dtype=np.float64)
    if R.shape != (k, k):
        raise ValueError(
            f"`r_mat` must have shape [{k}, {k}] to match `h_vec` of size {k}, "
            f"got shape {R.shape}."
        )
    v.one_of("update", update, ("joint", "independent"), "'joint' or 'independent'")
    if not np.all(np.isfinite(h)):
        raise ValueError(f"`h_vec` must be finite, got {h.tolist()}.")
    try:
        if not np.allclose(R, R.T):
            raise np.linalg.LinAlgError
        np.linalg.cholesky(R)
    except np.linalg.LinAlgError:
        raise ValueError(
            f"`r_mat` must be symmetric positive definite, got r_mat={R.tolist()}."
        ) from None
    H = np.zeros((k, state_dim))
    H[:, 0] = h
    return z, H, R


def _advance(est: _Estimator, z, dt, H, R, update: str | None, t=None):
    """One cycle of ``est.model`` (``update=None``: its own observation model)."""
    dt = _step_length(est, dt, t)
    state, ll, n = _cycle(
        est.model, est.state, est.log_likelihood, est.num_updates, z, dt, H, R, update
    )
    if not np.isfinite(float(ll)):  # one scalar read: the arithmetic overflowed
        raise ValueError(
            f"update {int(est.num_updates)} (z={np.asarray(z).tolist()}, dt={float(dt)!r}) "
            "made the filter's state non-finite (its arithmetic overflowed: an input too "
            "large for the dtype?); the estimator is unchanged. Mark bad ticks as missing "
            "(NaN) or rescale the features."
        )
    last = est.last_time if t is None else t
    return _replaced(est, state=state, log_likelihood=ll, num_updates=n, last_time=last)


def _step_length(est, dt, t):
    """``dt`` as given, or from the timestamp ``t`` and the last one (``dt = t - last``)."""
    if t is None:
        if dt is None:
            raise v.ArgumentTypeError("give `dt` (seconds since the last update) or `t=`.")
        return _as_dt(dt)
    t = v.finite_float("t", t, "a finite timestamp in seconds")
    last = est.last_time
    if dt is not None:
        dt = _as_dt(dt)
        if math.isfinite(last) and not math.isclose(float(dt), t - last, abs_tol=1e-12):
            raise ValueError(
                f"`dt` ({float(dt)!r}) and `t` ({t!r}) disagree: the last update was at "
                f"t={last!r}; give one of them."
            )
        return dt
    if not math.isfinite(last):
        raise ValueError(
            f"the first timestamped update (t={t!r}) needs `dt` too (the time from the "
            "prior), or an estimator started with `last_time=`."
        )
    if t < last:
        raise ValueError(
            f"`t` must not be before the last update's time: got t={t!r} after t={last!r} "
            "(equal times are dt = 0 updates)."
        )
    return np.asarray(t - last, dtype=np.float64)


@functools.partial(jax.jit, static_argnames=("update",))
def _cycle(model, state, log_likelihood, num_updates, z, dt, H, R, update: str | None):
    # Only what changes goes in and out (not the whole estimator: a pytree of ~20 leaves
    # costs ~20 us each way here, more than the cycle itself).
    # Inputs were checked on the host (NumPy) before the call: no traced checks needed.
    dt = jnp.asarray(dt, model.dtype)
    z = jnp.asarray(z, model.dtype)
    if update is None:
        observation = None
    else:
        observation = (jnp.asarray(H, model.dtype), jnp.asarray(R, model.dtype), update)
    state, ll = model.cycle(state, z, dt, observation)
    return state, log_likelihood + ll, num_updates + 1


def _replaced(est, **changes):
    """``est`` with some fields replaced, built as equinox's unflatten builds a Module
    (``object.__new__`` and ``object.__setattr__``): no pytree round trip, no ``__init__``."""
    new = object.__new__(type(est))
    for f in dataclasses.fields(est):
        object.__setattr__(new, f.name, changes.get(f.name, getattr(est, f.name)))
    return new


@jax.jit
def _drift_moments(model, state):
    """The drift's mean and variance in a state (an IMM's mixture), compiled (op by op
    ~1 ms)."""
    mean, cov = model.state_moments(state)
    return mean[0], cov[0, 0]


class _host_method:  # noqa: N801 (a decorator, named as one)
    """A method bound as ``functools.partial(f, self)``, not as an equinox ``BoundMethod``.

    Equinox turns every bound method of a Module into a Module (so that
    ``jax.jit(module.method)`` sees ``self`` as a pytree), which here costs ~25 us per
    call: a third of a streaming update. The estimators' methods run on the host and call
    compiled functions themselves, so they are bound plainly.
    """

    def __init__(self, func):
        self.__func__ = func
        functools.update_wrapper(self, func)

    def __get__(self, obj, objtype=None):
        return self if obj is None else functools.partial(self.__func__, obj)


class _Estimator(eqx.Module):
    """Shared plumbing: the update calls, the running log-likelihood, save/load, and the
    outputs of the specification's interface, all through the model's interface
    (``dj.AbstractDriftModel``: ``cycle``, ``state_moments``, ``state_regime_probs``)."""

    model: eqx.AbstractVar[AbstractDriftModel]
    state: eqx.AbstractVar[object]
    log_likelihood: eqx.AbstractVar[Scalar]
    num_updates: eqx.AbstractVar[Int[Array, ""]]
    last_time: eqx.AbstractVar[float]

    def _start(self, model, state, log_likelihood, num_updates, last_time=None) -> None:
        """Set the fields (from ``__init__``): the model's initial state unless given."""
        self.model = model
        self.state = model.initial_state() if state is None else state
        self.log_likelihood = jnp.asarray(log_likelihood, dtype=model.dtype)
        self.num_updates = jnp.asarray(num_updates, dtype=jnp.int32)
        # a host float (float64 whatever JAX's precision: epoch seconds need it); NaN = none
        self.last_time = math.nan if last_time is None else v.finite_float("last_time", last_time)

    @classmethod
    def from_result(cls, model, result, *, last_time=None):
        """An estimator that continues where a batch ``dj.filter(model, zs, dt)`` run ended:
        its state after the last step, its log-likelihood and step count (``last_time``:
        the last row's timestamp, for ``update_observation(z, t=...)``). Feeding it the
        next observations gives what ``dj.filter`` gives on the whole series (to rounding).

        Example:
            >>> import numpy as np, drift_jax as dj
            >>> model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(1.0), 0.0, 1.0)
            >>> zs = np.array([0.5, 1.0, 1.5])
            >>> est = dj.KalmanDriftEstimator.from_result(model, dj.filter(model, zs[:2], 0.1))
            >>> est = est.update_observation(zs[2], 0.1)
            >>> bool(np.isclose(est.drift_rate_per_sec(), dj.filter(model, zs, 0.1).drift[-1]))
            True
        """
        state = _state_from_result(model, result)
        T = result.log_likelihoods.shape[-1]
        return cls(model, state, result.log_likelihood, T, last_time=last_time)

    @property
    def step_fn(self) -> StreamingStep:
        """The cycle as a pure function ``(state, z, dt) -> (state, dj.StepOutputs)``
        (``dj.streaming_step(self.model)``), for ``jit`` / ``vmap``; ``self.state`` is a
        state it takes."""
        return StreamingStep(self.model)

    @_host_method
    def update_observation(self, z, dt=None, *, t=None):
        """One cycle: (IMM: mix,) predict over ``dt`` seconds, update with the model's
        features ``z`` (a scalar for one feature, ``[m]``, or named: a dict or
        ``pandas.Series`` matched to ``observation.feature_names``; NaN components are
        missing). ``t=`` gives the observation's timestamp instead (``dt = t - last``; the
        first timestamped update needs ``dt`` too, or ``last_time=`` at the start).
        ``dt = 0`` is an update with no prediction. Returns the new estimator."""
        names = self.model.observation.feature_names
        z = _as_obs("z", z, self.model.num_features, names)
        return _advance(self, z, dt, None, None, None, t)

    @_host_method
    def update_vector(self, z_vec, h_vec, r_mat, dt, update: str = "joint"):
        """One cycle whose update is the vector observation ``z_vec`` with loadings
        ``h_vec`` ``[k]`` and noise covariance ``r_mat`` ``[k, k]``.

        The specification's ``update_vector``: the ``k`` features enter as one observation
        with their full covariance (``update="independent"`` reproduces the old
        sequential scalar updates that ignore the correlation).
        """
        z, H, R = _vector_observation(z_vec, h_vec, r_mat, self.model.state_dim, update)
        return _advance(self, z, dt, H, R, update)

    @_host_method
    def predict(self, dt=None, *, t=None):
        """Advance ``dt`` seconds (or to time ``t``) with nothing observed (a pure
        prediction)."""
        nothing = np.full((self.model.num_features,), np.nan)
        return _advance(self, nothing, dt, None, None, None, t)

    @_host_method
    def save(self, path: str | os.PathLike) -> None:
        """Write the estimator (model and state) to ``path`` (equinox leaf serialisation)."""
        eqx.tree_serialise_leaves(path, self)

    @classmethod
    def load(cls, path: str | os.PathLike, model):
        """Restore an estimator saved with ``save``; ``model`` gives the structure (any
        model of the same classes and sizes; its values are replaced by the saved ones)."""
        return eqx.tree_deserialise_leaves(path, cls(model))

    @_host_method
    def drift_rate_per_sec(self) -> Scalar:
        """Posterior mean of the drift ``mu`` (bps/s); for an IMM the mixture
        ``sum_j w_j mu_j``."""
        return _drift_moments(self.model, self.state)[0]

    @_host_method
    def drift_variance(self) -> Scalar:
        """Posterior variance of the drift ``mu``; for an IMM the mixture variance,
        including the spread between the regimes."""
        return _drift_moments(self.model, self.state)[1]

    @_host_method
    def regime_probabilities(self) -> Float[Array, " M"]:
        """Posterior regime probabilities ``w`` (in ``model.regime_names`` order; ``[1.0]``
        for a single model)."""
        return self.model.state_regime_probs(self.state)

    @_host_method
    def p_crisis(self) -> Scalar:
        """``P(Crisis)``: the crisis regime's probability, 0 when there is none."""
        if self.model.crisis_index < 0:
            return jnp.zeros((), self.model.dtype)
        return self.regime_probabilities()[self.model.crisis_index]

    @_host_method
    def is_crisis(self, threshold: float = 0.3):
        """``P(Crisis) > threshold`` (never, without a crisis regime)."""
        return _is_crisis(self.p_crisis(), threshold)

    @_host_method
    def sigma_effective(self, sigma, crisis_amplifier=2.0) -> Scalar:
        """``sigma * (1 + crisis_amplifier * P(Crisis))`` (``sigma`` without a crisis
        regime)."""
        return _sigma_effective(sigma, self.p_crisis(), crisis_amplifier)

    @_host_method
    def forecast(self, horizons, *, cycle_seconds=None) -> Forecast:
        """``dj.forecast`` from the current state: the drift (mean, variance), the regime
        probabilities and the integrated drift (the expected price move, bps) ``horizons``
        seconds ahead (a scalar or ``[H]``), with nothing more observed. ``cycle_seconds``:
        the cycle length of a per-cycle ``transition`` (required for such an IMM)."""
        return _forecast(self.model, self.state, horizons, cycle_seconds=cycle_seconds)


class KalmanDriftEstimator(_Estimator):
    """Streaming Kalman drift estimator: feed one observation (or vector) per cycle.

    It has the IMM estimator's interface with one regime: ``regime_probabilities()`` is
    ``[1.0]``, ``p_crisis()`` 0, ``is_crisis()`` False and ``sigma_effective(sigma)`` is
    ``sigma`` (a single model is not a crisis regime).

    Arguments:
        model: a ``dj.KalmanModel``; its prior is the starting state.

    Example:
        >>> import drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.02, 1.0), dj.Observation.scalar(4.0), 0.0, 1.0)
        >>> est = dj.KalmanDriftEstimator(model)
        >>> est = est.update_observation(-3.0, dt=0.5).update_observation(-4.0, dt=0.5)
        >>> float(est.drift_rate_per_sec()) < 0
        True
    """

    model: KalmanModel
    state: KalmanState
    log_likelihood: Scalar
    num_updates: Int[Array, ""]
    last_time: float

    def __init__(
        self, model: KalmanModel, state=None, log_likelihood=0.0, num_updates=0, last_time=None
    ):
        # The estimator's class fixes the model class (and the state it carries).
        v.instance("model", model, KalmanModel, "a dj.KalmanModel")
        self._start(model, state, log_likelihood, num_updates, last_time)

    @_host_method
    def drift_acceleration(self) -> Scalar:
        """Posterior mean of ``mu_dot`` (bps/s^2); 0 for the scalar state."""
        if self.model.state_dim == 1:
            return jnp.zeros_like(self.state.mean[0])
        return self.state.mean[1]


class IMMDriftEstimator(_Estimator):
    """Streaming IMM drift estimator with the specification's interface.

    Each update is one step of ``dj.filter``'s own cycle (``IMMModel.cycle``): the scalar
    cycle for a scalar state, the general one otherwise, with several features reduced
    exactly to one observation as the filter reduces them. Its state is an ``IMMState``
    whose log-probabilities stay finite (ordered by fit) where a probability underflows.

    Arguments:
        model: a ``dj.IMMModel`` (e.g. ``dj.seed_imm(...)``).

    Example:
        >>> import drift_jax as dj
        >>> est = dj.IMMDriftEstimator(dj.seed_imm(dj.Observation.scalar(4.0)))
        >>> for z in (-30.0, -35.0, -40.0):
        ...     est = est.update_observation(z, dt=0.5)
        >>> bool(est.is_crisis())
        True
    """

    model: IMMModel
    state: IMMState
    log_likelihood: Scalar
    num_updates: Int[Array, ""]
    last_time: float

    def __init__(
        self, model: IMMModel, state=None, log_likelihood=0.0, num_updates=0, last_time=None
    ):
        # The estimator's class fixes the model class (and the state it carries).
        v.instance("model", model, IMMModel, "a dj.IMMModel")
        self._start(model, state, log_likelihood, num_updates, last_time)

    @_host_method
    def model_drifts(self) -> Float[Array, " M"]:
        """Each regime model's drift estimate."""
        return self.state.means[:, 0]


# --- the pure step (for jit / vmap / scan) --------------------------------------------------


class StepOutputs(eqx.Module):
    """What one streaming step gives: the estimator's outputs after the step.

    Attributes:
        drift: ``E[mu | z_<=t]`` (bps/s; an IMM's mixture).
        drift_var: its variance.
        regime_probs: ``[M]`` (``[1.0]`` for a single model).
        p_crisis: ``P(Crisis)`` (0 without a crisis regime).
        log_likelihood_step: ``log p(z_t | z_<t)``.
    """

    drift: Scalar
    drift_var: Scalar
    regime_probs: Float[Array, " M"]
    p_crisis: Scalar
    log_likelihood_step: Scalar


class StreamingStep:
    """The streaming cycle as a pure function: ``step(state, z, dt) -> (state, outputs)``.

    ``state`` is ``model.initial_state()`` or an estimator's ``state``; ``z`` is ``[m]``
    (NaN = missing), ``dt`` a scalar ``>= 0`` (0: an update with no prediction). No
    host-side checks: it works under ``jit``, ``vmap`` (over paths, instruments or
    parameters: build it inside the mapped function from the mapped model) and inside
    ``lax.scan``. Called directly it runs one compiled cycle, compiled once per model
    structure (the model's parameters are arguments, not constants: another model of the
    same shape reuses the compilation).

    Attributes:
        model: the model it steps.
    """

    def __init__(self, model):
        check_model(model)
        self.model = model

    def __call__(self, state, z, dt) -> tuple[object, StepOutputs]:
        return _pure_step(self.model, state, z, dt)

    def __repr__(self) -> str:
        return f"StreamingStep({type(self.model).__name__})"


@jax.jit
def _pure_step(model, state, z, dt):
    z = jnp.reshape(jnp.asarray(z, model.dtype), (model.num_features,))
    state, ll = model.cycle(state, z, jnp.asarray(dt, model.dtype))
    mean, cov = model.state_moments(state)
    probs = model.state_regime_probs(state)
    ci = model.crisis_index
    p_crisis = probs[ci] if ci >= 0 else jnp.zeros((), probs.dtype)
    return state, StepOutputs(mean[0], cov[0, 0], probs, p_crisis, ll)


def streaming_step(model) -> StreamingStep:
    """The streaming estimators' cycle as a pure ``(state, z, dt) -> (state, outputs)``.

    Arguments:
        model: a ``dj.KalmanModel`` or ``dj.IMMModel``.

    Returns:
        A ``dj.StreamingStep`` (a callable holding the model).

    Example:
        >>> import jax, jax.numpy as jnp, drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(1.0), 0.0, 1.0)
        >>> step = jax.jit(dj.streaming_step(model))
        >>> state, out = step(model.initial_state(), jnp.array([0.5]), 0.1)
        >>> bool(out.drift > 0), out.regime_probs.tolist()
        (True, [1.0])
    """
    return StreamingStep(model)


def _state_from_result(model, result):
    """The filter state after the last step of a ``dj.filter`` result of ``model``."""
    if isinstance(model, KalmanModel) and hasattr(result, "predicted_means"):
        return KalmanState(result.means[-1], result.covs[-1])
    if isinstance(model, IMMModel) and hasattr(result, "model_means"):
        probs = result.regime_probs[-1]
        tiny = jnp.finfo(probs.dtype).tiny
        log_probs = jnp.log(jnp.maximum(probs, tiny))
        return IMMState(log_probs, result.model_means[-1], result.model_covs[-1])
    raise v.ArgumentTypeError(
        f"`result` must be a dj.filter result of the model ({type(model).__name__}), got "
        f"{type(result).__name__}."
    )
