"""Step-at-a-time estimators with the specification's interface.

Each call runs one jitted step (the same ``step`` the filters scan) and returns a new
estimator; estimators are immutable, so a state can be kept, compared or replayed. An
estimator saves to a file and restores with a bit-identical continuation.
"""

from __future__ import annotations

import functools
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._imm import IMMModel, IMMState, _stack, _unstack, combine, imm_step, initial_state
from ._kalman import KalmanModel, KalmanState, kalman_step
from ._risk import is_crisis as _is_crisis, sigma_effective as _sigma_effective
from ._types import Array, Float, Int, Scalar


def _as_dt(dt) -> np.ndarray:
    arr = np.asarray(dt, dtype=np.float64)
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
    if update not in ("joint", "independent"):
        raise ValueError(f"`update` must be 'joint' or 'independent', got {update!r}.")
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


@functools.partial(jax.jit, static_argnames=("update",))
def _kalman_advance(est: KalmanDriftEstimator, z, dt, H, R, update: str | None):
    model = est.model
    # Inputs were checked on the host (NumPy) before the call: no traced checks needed.
    dt = jnp.asarray(dt, model.dtype)
    z = jnp.asarray(z, model.dtype)
    if update is None:  # the model's own observation
        update = model.observation.update
        H, R = model.observation.matrices(model.state_dim, model.dtype)
    else:
        H, R = jnp.asarray(H, model.dtype), jnp.asarray(R, model.dtype)
    F, Q = model.dynamics.transition(dt)
    state, (ll, *_) = kalman_step(est.state, F, Q, z, H, R, update)
    return _advanced(est, state, ll)


@functools.partial(jax.jit, static_argnames=("update",))
def _imm_advance(est: IMMDriftEstimator, z, dt, H, R, update: str | None):
    model = est.model
    # Inputs were checked on the host (NumPy) before the call: no traced checks needed.
    dt = jnp.asarray(dt, model.dtype)
    z = jnp.asarray(z, model.dtype)
    if update is None:
        update = model.observation.update
        H, R = model.observation.matrices(model.state_dim, model.dtype)
    else:
        H, R = jnp.asarray(H, model.dtype), jnp.asarray(R, model.dtype)
    Fs, Qs = model.transitions(dt)
    carry = _unstack(est.state, model.num_regimes)
    carry, (ll, _) = imm_step(carry, Fs, Qs, z, H, R, model.transition, update)
    return _advanced(est, _stack(carry), ll)


@jax.jit
def _imm_mixture(state: IMMState):
    """Step 5's mixture ``(mean, cov)`` of a state, compiled (op by op it costs ~1 ms)."""
    lp, ms, cs = _unstack(state, state.log_probs.shape[0])
    return combine(lp, ms, cs)


def _advanced(est, state, ll):
    return eqx.tree_at(
        lambda e: (e.state, e.log_likelihood, e.num_updates),
        est,
        (state, est.log_likelihood + ll, est.num_updates + 1),
    )


class _Estimator(eqx.Module):
    """Shared plumbing: the update calls, the running log-likelihood, save/load.

    A concrete estimator sets ``_step`` to its jitted cycle (``_kalman_advance`` or
    ``_imm_advance``), which takes ``(estimator, z, dt, H, R, update)``.
    """

    model: eqx.AbstractVar[KalmanModel | IMMModel]
    log_likelihood: eqx.AbstractVar[Scalar]
    num_updates: eqx.AbstractVar[Int[Array, ""]]

    def update_observation(self, z, dt):
        """One cycle: (IMM: mix,) predict over ``dt`` seconds, update with the model's
        features ``z`` (a scalar for one feature, or ``[m]``; NaN components are missing).
        Returns the new estimator."""
        z = _as_obs("z", z, self.model.num_features)
        return self._step(self, z, _as_dt(dt), None, None, None)

    def update_vector(self, z_vec, h_vec, r_mat, dt, update: str = "joint"):
        """One cycle whose update is the vector observation ``z_vec`` with loadings
        ``h_vec`` ``[k]`` and noise covariance ``r_mat`` ``[k, k]``.

        The specification's ``update_vector``: the ``k`` features enter as one observation
        with their full covariance (``update="independent"`` reproduces the old
        sequential scalar updates that ignore the correlation).
        """
        z, H, R = _vector_observation(z_vec, h_vec, r_mat, self.model.state_dim, update)
        return self._step(self, z, _as_dt(dt), H, R, update)

    def predict(self, dt):
        """Advance ``dt`` seconds with nothing observed (a pure prediction)."""
        return self.update_observation(np.full((self.model.num_features,), np.nan), dt)

    def save(self, path: str | os.PathLike) -> None:
        """Write the estimator (model and state) to ``path`` (equinox leaf serialisation)."""
        eqx.tree_serialise_leaves(path, self)

    @classmethod
    def load(cls, path: str | os.PathLike, model):
        """Restore an estimator saved with ``save``; ``model`` gives the structure (any
        model of the same classes and sizes; its values are replaced by the saved ones)."""
        return eqx.tree_deserialise_leaves(path, cls(model))


class KalmanDriftEstimator(_Estimator):
    """Streaming Kalman drift estimator: feed one observation (or vector) per cycle.

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
    _step = staticmethod(_kalman_advance)

    def __init__(self, model: KalmanModel, state=None, log_likelihood=0.0, num_updates=0):
        if not isinstance(model, KalmanModel):
            raise ValueError(f"`model` must be a dj.KalmanModel, got {type(model).__name__}.")
        self.model = model
        self.state = KalmanState(model.init_mean, model.init_cov) if state is None else state
        self.log_likelihood = jnp.asarray(log_likelihood, dtype=model.dtype)
        self.num_updates = jnp.asarray(num_updates, dtype=jnp.int32)

    def drift_rate_per_sec(self) -> Scalar:
        """Posterior mean of the drift ``mu`` (bps/s)."""
        return self.state.mean[0]

    def drift_variance(self) -> Scalar:
        """Posterior variance of the drift ``mu``."""
        return self.state.cov[0, 0]

    def drift_acceleration(self) -> Scalar:
        """Posterior mean of ``mu_dot`` (bps/s^2); 0 for the scalar state."""
        if self.model.state_dim == 1:
            return jnp.zeros_like(self.state.mean[0])
        return self.state.mean[1]


class IMMDriftEstimator(_Estimator):
    """Streaming IMM drift estimator with the specification's interface.

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
    _step = staticmethod(_imm_advance)

    def __init__(self, model: IMMModel, state=None, log_likelihood=0.0, num_updates=0):
        if not isinstance(model, IMMModel):
            raise ValueError(f"`model` must be a dj.IMMModel, got {type(model).__name__}.")
        self.model = model
        self.state = initial_state(model) if state is None else state
        self.log_likelihood = jnp.asarray(log_likelihood, dtype=model.dtype)
        self.num_updates = jnp.asarray(num_updates, dtype=jnp.int32)

    def _mixture(self):
        return _imm_mixture(self.state)

    def drift_rate_per_sec(self) -> Scalar:
        """Mixture drift ``sum_j w_j mu_j`` (bps/s)."""
        return self._mixture()[0][0]

    def drift_variance(self) -> Scalar:
        """Mixture variance of the drift, including the spread between the regimes."""
        return self._mixture()[1][0, 0]

    def regime_probabilities(self) -> Float[Array, " M"]:
        """Posterior regime probabilities ``w`` (in ``model.regime_names`` order)."""
        return jnp.exp(self.state.log_probs)

    def p_crisis(self) -> Scalar:
        return self.regime_probabilities()[self.model.crisis_index]

    def is_crisis(self, threshold: float = 0.3):
        """``P(Crisis) > threshold``."""
        return _is_crisis(self.p_crisis(), threshold)

    def sigma_effective(self, sigma, crisis_amplifier=2.0) -> Scalar:
        """``sigma * (1 + crisis_amplifier * P(Crisis))``."""
        return _sigma_effective(sigma, self.p_crisis(), crisis_amplifier)

    def model_drifts(self) -> Float[Array, " M"]:
        """Each regime model's drift estimate."""
        return self.state.means[:, 0]
