"""The linear-Gaussian Kalman filter for one drift model: predict, update, scan.

Cycle order from the initial prior at t = 0: predict with ``dt_t``, then update with
``z_t``. The log-likelihood is ``sum_t log p(z_t | z_<t)``.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core import linalg as la, validate as v
from .._core.types import Array, Float, Scalar, StateMatrix, StateVector
from .._models.constraints import CONSTRAINT, PositiveDefinite, Real
from .._models.dynamics import AbstractDynamics, stacked_transitions
from .._models.model import AbstractDriftModel, AbstractFilterResult
from .._models.observation import Observation, mask_missing, measurement_update
from .chunked import ChunkedInfo
from .methods import FusedAdjoint
from .reduction import reduce_features


def initial_moments(init_mean, init_cov, n: int, dtype) -> tuple[StateVector, StateMatrix]:
    """Broadcast ``init_mean`` to ``[n]``; ``init_cov`` (scalar, diagonal, full) to ``[n, n]``."""
    mean = v.as_float_array("init_mean", init_mean, dtype)
    mean = jnp.broadcast_to(mean, (n,)) if mean.ndim == 0 else mean
    if mean.shape != (n,):
        raise ValueError(f"`init_mean` must be a scalar or have shape [{n}], got {mean.shape}.")
    mean = v.check("init_mean", mean, jnp.isfinite, "finite")
    cov = v.as_float_array("init_cov", init_cov, dtype)
    if cov.ndim == 0:
        cov = cov * jnp.eye(n, dtype=dtype)
    elif cov.ndim == 1:
        cov = jnp.diag(cov)
    if cov.shape != (n, n):
        raise ValueError(
            f"`init_cov` must be a scalar, [{n}] or [{n}, {n}], got shape {cov.shape}."
        )
    if v.is_traced(cov):
        return mean, cov
    from .._models.observation import _checked_cholesky

    _checked_cholesky("init_cov", cov)
    return mean, cov


class KalmanModel(AbstractDriftModel):
    """One drift model observed through features: dynamics, observation, initial prior.

    The one-regime ``dj.AbstractDriftModel``: ``regime_names == ("Kalman",)``, regime
    probabilities ``[1.0]``, no crisis regime (``crisis_index == -1``: ``P(Crisis) = 0``).
    Final: not meant to be subclassed.

    Arguments:
        dynamics: ``dj.OU`` (state ``[mu]``) or ``dj.OUAccel`` (state ``[mu, mu_dot]``).
        observation: ``dj.Observation`` (``m`` features).
        init_mean: prior mean of the state before the first step (scalar or ``[n]``).
        init_cov: prior covariance (scalar, ``[n]`` diagonal or ``[n, n]`` SPD).

    Example:
        >>> import drift_jax as dj, jax.numpy as jnp
        >>> model = dj.KalmanModel(dj.OU(0.02, 1.0), dj.Observation.scalar(4.0), 0.0, 1.0)
        >>> res = dj.filter(model, jnp.array([0.5, 1.0, jnp.nan]), dt=0.1)
        >>> res.drift.shape
        (3,)
    """

    dynamics: AbstractDynamics
    observation: Observation
    init_mean: StateVector = eqx.field(metadata={CONSTRAINT: Real()})
    init_cov: StateMatrix = eqx.field(metadata={CONSTRAINT: PositiveDefinite()})

    def __init__(self, dynamics, observation, init_mean=0.0, init_cov=1.0):
        v.instance("dynamics", dynamics, AbstractDynamics, "dj.OU or dj.OUAccel")
        v.instance("observation", observation, Observation, "a dj.Observation")
        self.dynamics = dynamics
        self.observation = observation
        self.init_mean, self.init_cov = initial_moments(
            init_mean, init_cov, dynamics.state_dim, dynamics.dtype
        )

    # --- dj.AbstractDriftModel ---------------------------------------------------------------

    kind: ClassVar[str] = "kalman"
    supports_associative_scan: ClassVar[bool] = True

    @property
    def regime_names(self) -> tuple[str, ...]:
        return ("Kalman",)

    @property
    def crisis_index(self) -> int:
        return -1  # a single model is not a crisis regime

    @property
    def state_dim(self) -> int:
        return self.dynamics.state_dim

    @property
    def regime_dynamics(self) -> tuple[AbstractDynamics, ...]:
        return (self.dynamics,)

    def transition_matrix(self, dt=None) -> Float[Array, "1 1"]:
        return jnp.ones((1, 1), self.dtype)

    @property
    def initial_regime_probs(self) -> Float[Array, " 1"]:
        return jnp.ones((1,), self.dtype)

    def default_adjoint(self) -> FusedAdjoint:
        # The backward loop is one fused kernel per step: ~2x the forward instead of ~40x.
        return FusedAdjoint()

    def filter_from(self, state, zs, dt, adjoint) -> tuple[KalmanResult, KalmanState]:
        return _sequential_scan(self, zs, dt, adjoint, state)

    def associative_filter(self, zs, dt) -> KalmanResult:
        if self.observation.robust is not None:
            raise ValueError(
                "method=dj.Associative() (method='parallel') is the linear-Gaussian filter; "
                "this model's observation has a robust update "
                f"(robust={self.observation.robust!r}), whose gain depends on each "
                "innovation. Use dj.Sequential() or dj.Chunked(), "
                "or observation.with_robust(None)."
            )
        return _parallel_scan(self, zs, dt)

    def initial_state(self) -> KalmanState:
        return KalmanState(self.init_mean, self.init_cov)

    def cycle(self, state: KalmanState, z, dt, observation=None):
        if observation is None:
            H, R = self.observation.matrices(self.state_dim, self.dtype)
            update = self.observation.update
        else:
            H, R, update = observation
        robust = self.observation.robust  # the model's option, for every update
        F, Q = self.dynamics.transition(dt)
        if reduces(H, z[None]):
            # The filter's own cycle: several features of a scalar drift reduced exactly.
            y, r, log_g = reduce_features(H[:, 0], R, update, z[None])
            one = jnp.ones((1, 1), H.dtype)
            state, (ll, *_) = kalman_step(state, F, Q, y, one, r[:, None], "joint", robust)
            return state, ll + log_g[0]
        state, (ll, *_) = kalman_step(state, F, Q, z, H, R, update, robust)
        return state, ll

    def state_moments(self, state: KalmanState):
        return state.mean, state.cov

    def state_regime_probs(self, state: KalmanState) -> Float[Array, " 1"]:
        return jnp.ones((1,), state.mean.dtype)


class KalmanState(eqx.Module):
    """Filter carry: the posterior moments of the state after the last update."""

    mean: StateVector
    cov: StateMatrix


class KalmanResult(AbstractFilterResult):
    """Per-step outputs of ``dj.filter`` on a ``KalmanModel`` (leading axis ``T``).

    A result of ``jax.vmap(dj.filter)`` has a leading batch axis on every field; the
    properties keep it (``drift`` is then ``[B, T]``). The interface of every filter result
    (``dj.AbstractFilterResult``) with one regime: ``regime_probs`` is ``[T, 1]`` of ones,
    ``crisis_index`` is -1, ``p_crisis`` is 0 and ``sigma_effective(sigma)`` is ``sigma``.
    """

    log_likelihood: Scalar
    log_likelihoods: Float[Array, " T"]
    means: Float[Array, "T n"]
    covs: Float[Array, "T n n"]
    predicted_means: Float[Array, "T n"]
    predicted_covs: Float[Array, "T n n"]
    innovations: Float[Array, "T m"]
    chunked: ChunkedInfo | None = None

    @property
    def regime_probs(self) -> Float[Array, "*batch T 1"]:
        """A single model is one regime with probability 1."""
        return jnp.ones_like(self.means[..., :1])

    @property
    def predicted_regime_probs(self) -> Float[Array, "*batch T 1"]:
        """The regime probabilities before each update: 1."""
        return self.regime_probs

    @property
    def crisis_index(self) -> int:
        return -1


def predict(mean: StateVector, cov: StateMatrix, F: StateMatrix, Q: StateMatrix):
    """Time update ``x- = F x``, ``P- = F P F^T + Q``."""
    return la.mv(F, mean), la.symmetrise(la.mm(la.mm(F, cov), la.transpose(F)) + Q)


def kalman_step(state: KalmanState, F, Q, z, H, R, update: str, robust=None):
    """One cycle: predict with ``(F, Q)``, update with ``z`` (NaN = missing; ``robust``:
    the observation's robust update, ``_models/robust.py``; ``None``: Gaussian).

    Returns the new state and ``(log p(z | past), predicted mean, predicted cov,
    innovation)``.
    """
    pm, pP = predict(state.mean, state.cov, F, Q)
    mean, cov, ll = measurement_update(pm, pP, z, H, R, update, robust)
    innovation = z - la.mv(H, pm)
    return KalmanState(mean, cov), (ll, pm, pP, innovation)


# Compiled once per model structure, method and shapes: called eagerly, a scan over a fresh
# closure would recompile on every call (~1 s each), not just on the first.
@eqx.filter_jit
def _sequential_scan(model: KalmanModel, zs, dt, adjoint, init=None):
    """The sequential filter (``dj.Sequential(adjoint)``) on checked inputs, from ``init``
    (``None``: the prior): ``(result, state after the last step)``."""
    H, R = model.observation.matrices(model.state_dim, model.dtype)
    update = model.observation.update
    # Everything a step reads that is not per step is an explicit parameter: a hand-written
    # adjoint (dj.FusedAdjoint) differentiates only its explicit inputs.
    reduced = reduces(H, zs)
    if reduced:
        # Several features of a scalar drift: reduced exactly to one observation per step
        # (_filters/reduction.py, as the IMM does), the m x m algebra vectorised over T.
        ys, rs, log_g = reduce_features(H[:, 0], R, update, zs)
        params = {"H": jnp.ones((1, 1), zs.dtype)}
        xs, step_update = {"z": ys[:, None], "R": rs[:, None, None]}, "joint"
    else:
        params, xs, step_update = {"H": H, "R": R}, {"z": zs}, update
    robust = model.observation.robust
    if robust is not None:
        # An explicit parameter (the fused adjoint differentiates only those). With several
        # features the robust gate is on the reduced innovation: the same gate as the
        # vector update's (along the loadings), _models/robust.py.
        params["robust"] = robust
    if dt.ndim == 0:
        F, Q = model.dynamics.transition(dt)
        params.update(F=F, Q=Q)
    else:
        F, Q = stacked_transitions(model.dynamics, dt, model.state_dim)
        xs.update(F=F, Q=Q)

    def step(p, state, x):
        e = {**p, **x}
        state, (ll, pm, pP, innov) = kalman_step(
            state, e["F"], e["Q"], e["z"], e["H"], e["R"], step_update, e.get("robust")
        )
        return state, (ll, state.mean, state.cov, pm, pP, innov)

    init = model.initial_state() if init is None else init
    last, outs = adjoint.scan(step, params, init, xs)
    lls, means, covs, pms, pPs, innovs = outs
    if reduced:
        lls = lls + log_g
        innovs = zs - pms * H[None, :, 0]  # each feature's innovation (n = 1: H pm = a mu-)
    return KalmanResult(jnp.sum(lls), lls, means, covs, pms, pPs, innovs), last


def reduces(H, zs) -> bool:
    """Whether the filter reduces the features to one observation per step: several
    features (``zs`` ``[T, m]``, ``m > 1``) of a scalar state (``H`` ``[m, 1]``)."""
    return H.shape[1] == 1 and zs.shape[-1] > 1


# --- Parallel-in-time filter (Särkkä & García-Fernández 2021, IEEE TAC 66(1)) -------------


def _generic_element(F, Q, z, H, R):
    # Small algebra written out (_core/linalg.py): batched LAPACK solves of 1x1/2x2 matrices are
    # slow on CPU, and with ~5e5 or more elements XLA:CPU (jax 0.10.2) hung in them.
    n = F.shape[-1]
    _, zm, Hm, Rm = mask_missing(z, H, R)
    S = la.mm(la.mm(Hm, Q), la.transpose(Hm)) + Rm
    HtSinv = la.transpose(la.cho_solve(la.cholesky(S), Hm))  # H^T S^{-1}  [n, m]
    K = la.mm(Q, HtSinv)
    IKH = jnp.eye(n, dtype=F.dtype) - la.mm(K, Hm)
    A = la.mm(IKH, F)
    b = la.mv(K, zm)
    C = la.symmetrise(la.mm(IKH, Q))
    eta = la.mv(la.transpose(F), la.mv(HtSinv, zm))
    J = la.symmetrise(la.mm(la.mm(la.transpose(F), la.mm(HtSinv, Hm)), F))
    return A, b, C, eta, J


def _first_element(F, Q, z, H, R, m0, P0):
    n = F.shape[-1]
    _, zm, Hm, Rm = mask_missing(z, H, R)
    # The sequential filter's own prediction (symmetrised): the same derivative in
    # `init_cov` too, not only along symmetric directions.
    m1, P1 = predict(m0, P0, F, Q)
    HP = la.mm(Hm, P1)
    S = la.mm(HP, la.transpose(Hm)) + Rm
    K = la.transpose(la.cho_solve(la.cholesky(S), HP))
    b = m1 + la.mv(K, zm - la.mv(Hm, m1))
    C = la.symmetrise(P1 - la.mm(la.mm(K, S), la.transpose(K)))
    zero = jnp.zeros((n, n), F.dtype)
    return zero, b, C, jnp.zeros((n,), F.dtype), zero


def _combine(ei, ej):
    Ai, bi, Ci, etai, Ji = ei
    Aj, bj, Cj, etaj, Jj = ej
    n = Ai.shape[-1]
    eye = jnp.eye(n, dtype=Ai.dtype)
    # W = A_j (I + C_i J_j)^{-1};  V = A_i^T (I + J_j C_i)^{-1}
    W = la.transpose(la.solve(la.transpose(eye + la.mm(Ci, Jj)), la.transpose(Aj)))
    V = la.transpose(la.solve(la.transpose(eye + la.mm(Jj, Ci)), Ai))
    A = la.mm(W, Ai)
    b = la.mv(W, bi + la.mv(Ci, etaj)) + bj
    C = la.symmetrise(la.mm(la.mm(W, Ci), la.transpose(Aj)) + Cj)
    eta = la.mv(V, etaj - la.mv(Jj, bi)) + etai
    J = la.symmetrise(la.mm(la.mm(V, Jj), Ai) + Ji)
    return A, b, C, eta, J


# Compiled as a whole: op-by-op, the associative scan dispatches (and compiles) hundreds
# of small operations, ~20 s for the first call.
@eqx.filter_jit
def _parallel_scan(model: KalmanModel, zs, dt) -> KalmanResult:
    """The parallel-in-time filter (``dj.Associative()``) on checked inputs.

    ``update="independent"`` equals one joint update with ``diag(R)`` (sequential scalar
    updates with uncorrelated noise are the joint update), so that is what is scanned.
    """
    dtype = model.dtype
    T = zs.shape[0]
    n = model.state_dim
    H, R = model.observation.matrices(n, dtype)
    if model.observation.update == "independent":
        R = jnp.diag(jnp.diagonal(R))
    Fs, Qs = stacked_transitions(model.dynamics, jnp.broadcast_to(dt, (T,)), n)
    first = _first_element(Fs[0], Qs[0], zs[0], H, R, model.init_mean, model.init_cov)
    rest = jax.vmap(lambda F, Q, z: _generic_element(F, Q, z, H, R))(Fs[1:], Qs[1:], zs[1:])
    elems = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    _, means, covs, _, _ = jax.lax.associative_scan(jax.vmap(_combine), elems)
    prev_means = jnp.concatenate([model.init_mean[None], means[:-1]])
    prev_covs = jnp.concatenate([model.init_cov[None], covs[:-1]])
    pms, pPs = jax.vmap(predict)(prev_means, prev_covs, Fs, Qs)
    _, _, lls = jax.vmap(lambda pm, pP, z: measurement_update(pm, pP, z, H, R, "joint"))(
        pms, pPs, zs
    )
    innovs = zs - jnp.einsum("ij,tj->ti", H, pms)
    return KalmanResult(jnp.sum(lls), lls, means, covs, pms, pPs, innovs)
