"""Step-at-a-time estimators with the specification's interface.

Each call runs one jitted step -- the model's own ``cycle``, the same cycle ``dj.filter``
scans (for an IMM with a scalar state the scalar cycle, with several features reduced
exactly to one as the filter does) -- and returns a new estimator; estimators are
immutable, so a state can be kept, compared or replayed. An estimator saves to a file and
restores with a bit-identical continuation.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core import validate as v
from .._core.types import Array, Float, Int, Scalar
from .._models.model import AbstractDriftModel
from .._models.risk import is_crisis as _is_crisis, sigma_effective as _sigma_effective
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
    if not (np.isfinite(arr) and arr > 0):
        raise ValueError(f"`dt` must be finite and > 0 (seconds), got dt={float(arr)!r}.")
    return arr


def _as_obs(name: str, z, m: int) -> np.ndarray:
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


def _advance(est: _Estimator, z, dt, H, R, update: str | None):
    """One cycle of ``est.model`` (``update=None``: its own observation model)."""
    state, ll, n = _cycle(
        est.model, est.state, est.log_likelihood, est.num_updates, z, dt, H, R, update
    )
    return _replaced(est, state=state, log_likelihood=ll, num_updates=n)


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

    def _start(self, model, state, log_likelihood, num_updates) -> None:
        """Set the fields (from ``__init__``): the model's initial state unless given."""
        self.model = model
        self.state = model.initial_state() if state is None else state
        self.log_likelihood = jnp.asarray(log_likelihood, dtype=model.dtype)
        self.num_updates = jnp.asarray(num_updates, dtype=jnp.int32)

    @_host_method
    def update_observation(self, z, dt):
        """One cycle: (IMM: mix,) predict over ``dt`` seconds, update with the model's
        features ``z`` (a scalar for one feature, or ``[m]``; NaN components are missing).
        Returns the new estimator."""
        z = _as_obs("z", z, self.model.num_features)
        return _advance(self, z, _as_dt(dt), None, None, None)

    @_host_method
    def update_vector(self, z_vec, h_vec, r_mat, dt, update: str = "joint"):
        """One cycle whose update is the vector observation ``z_vec`` with loadings
        ``h_vec`` ``[k]`` and noise covariance ``r_mat`` ``[k, k]``.

        The specification's ``update_vector``: the ``k`` features enter as one observation
        with their full covariance (``update="independent"`` reproduces the old
        sequential scalar updates that ignore the correlation).
        """
        z, H, R = _vector_observation(z_vec, h_vec, r_mat, self.model.state_dim, update)
        return _advance(self, z, _as_dt(dt), H, R, update)

    @_host_method
    def predict(self, dt):
        """Advance ``dt`` seconds with nothing observed (a pure prediction)."""
        return self.update_observation(np.full((self.model.num_features,), np.nan), dt)

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

    def __init__(self, model: KalmanModel, state=None, log_likelihood=0.0, num_updates=0):
        # The estimator's class fixes the model class (and the state it carries).
        v.instance("model", model, KalmanModel, "a dj.KalmanModel")
        self._start(model, state, log_likelihood, num_updates)

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

    def __init__(self, model: IMMModel, state=None, log_likelihood=0.0, num_updates=0):
        # The estimator's class fixes the model class (and the state it carries).
        v.instance("model", model, IMMModel, "a dj.IMMModel")
        self._start(model, state, log_likelihood, num_updates)

    @_host_method
    def model_drifts(self) -> Float[Array, " M"]:
        """Each regime model's drift estimate."""
        return self.state.means[:, 0]
