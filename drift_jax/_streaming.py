"""Step-at-a-time estimators with the specification's interface.

Each call runs one jitted step (the same ``step`` the filters scan) and returns a new
estimator; the estimator is immutable, so a state can be kept, compared or replayed.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from . import _linalg as la
from ._inputs import check_no_inf
from ._kalman import KalmanModel, KalmanState, kalman_step
from ._types import Array, Float, Int, Scalar
from ._validate import check


def _as_dt(dt, dtype) -> Array:
    arr = jnp.asarray(dt, dtype=dtype)
    if arr.ndim != 0:
        raise ValueError(f"`dt` must be a scalar step length in seconds, got shape {arr.shape}.")
    return arr


def _as_obs(name: str, z, m: int, dtype) -> Array:
    arr = jnp.asarray(z, dtype=dtype).reshape(-1)
    if arr.shape != (m,):
        raise ValueError(
            f"`{name}` must hold {m} feature value(s) (the observation model's width), "
            f"got shape {jnp.shape(z)}."
        )
    return arr


@eqx.filter_jit
def _kalman_advance(est: KalmanDriftEstimator, z, dt, H, R, update: str):
    dt = check("dt", dt, lambda d: jnp.isfinite(d) & (d > 0), "finite and > 0 (seconds)")
    z = check_no_inf("z", z)
    F, Q = est.model.dynamics.transition(dt)
    state, (ll, *_) = kalman_step(est.state, F, Q, z, H, R, update)
    return KalmanDriftEstimator(est.model, state, est.log_likelihood + ll, est.num_updates + 1)


class KalmanDriftEstimator(eqx.Module):
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

    def __init__(self, model: KalmanModel, state=None, log_likelihood=0.0, num_updates=0):
        if not isinstance(model, KalmanModel):
            raise ValueError(f"`model` must be a dj.KalmanModel, got {type(model).__name__}.")
        self.model = model
        self.state = KalmanState(model.init_mean, model.init_cov) if state is None else state
        self.log_likelihood = jnp.asarray(log_likelihood, dtype=model.dtype)
        self.num_updates = jnp.asarray(num_updates, dtype=jnp.int32)

    def update_observation(self, z, dt) -> KalmanDriftEstimator:
        """Predict over ``dt`` seconds, then update with the model's features ``z``.

        ``z`` is a scalar (one feature) or ``[m]``; NaN components are missing.
        """
        obs = self.model.observation
        dtype = self.model.dtype
        z = _as_obs("z", z, obs.num_features, dtype)
        H = obs.observation_matrix(self.model.state_dim)
        return _kalman_advance(self, z, _as_dt(dt, dtype), H, obs.cov, obs.update)

    def update_vector(
        self, z_vec, h_vec, r_mat, dt, update: str = "joint"
    ) -> KalmanDriftEstimator:
        """One vector update with loadings ``h_vec`` ``[k]`` and noise covariance ``r_mat``.

        This is the specification's ``update_vector``: the ``k`` features enter as one
        observation with their full covariance (``update="independent"`` reproduces the
        old sequential scalar updates).
        """
        dtype = self.model.dtype
        h = jnp.asarray(h_vec, dtype=dtype).reshape(-1)
        k = h.shape[0]
        z = _as_obs("z_vec", z_vec, k, dtype)
        R = jnp.asarray(r_mat, dtype=dtype)
        if R.shape != (k, k):
            raise ValueError(
                f"`r_mat` must have shape [{k}, {k}] to match `h_vec` of size {k}, "
                f"got shape {R.shape}."
            )
        if update not in ("joint", "independent"):
            raise ValueError(f"`update` must be 'joint' or 'independent', got {update!r}.")
        eig_ok = bool(jnp.all(jnp.isfinite(jnp.linalg.cholesky(la.symmetrise(R)))))
        if not eig_ok or not bool(jnp.allclose(R, R.T)):
            raise ValueError(f"`r_mat` must be symmetric positive definite, got {R.tolist()}.")
        H = jnp.zeros((k, self.model.state_dim), dtype).at[:, 0].set(h)
        return _kalman_advance(self, z, _as_dt(dt, dtype), H, R, update)

    def predict(self, dt) -> KalmanDriftEstimator:
        """Advance ``dt`` seconds with no observation (a pure prediction)."""
        m = self.model.num_features
        return self.update_observation(jnp.full((m,), jnp.nan), dt)

    def drift_rate_per_sec(self) -> Scalar:
        """Posterior mean of the drift ``mu`` (bps/s)."""
        return self.state.mean[0]

    def drift_variance(self) -> Scalar:
        """Posterior variance of the drift ``mu``."""
        return self.state.cov[0, 0]

    def drift_acceleration(self) -> Scalar:
        """Posterior mean of ``mu_dot`` (bps/s^2); 0 for the scalar state."""
        return (
            self.state.mean[1] if self.model.state_dim > 1 else jnp.zeros_like(self.state.mean[0])
        )

    @property
    def state_mean(self) -> Float[Array, " n"]:
        return self.state.mean

    @property
    def state_cov(self) -> Float[Array, "n n"]:
        return self.state.cov
