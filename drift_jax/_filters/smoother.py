"""``dj.smooth``: the drift and the regimes in hindsight, from every observation.

A backward pass over the forward filter's per-step outputs. For a ``dj.KalmanModel`` it is
the Rauch-Tung-Striebel smoother (Rauch, Tung & Striebel 1965): exact. For a
``dj.IMMModel`` it is Kim's smoother (Kim, C.-J. (1994), "Dynamic linear models with
Markov-switching", Journal of Econometrics 60, 1-22), run on the IMM's filtered
per-regime moments:

- regimes: ``P(s_t = j, s_{t+1} = k | z_<=T) = P(s_{t+1} = k | z_<=T) w_t(j) Pi_{t+1}[j, k]
  / P(s_{t+1} = k | z_<=t)``, summed over ``k``;
- drift: for each pair ``(j, k)`` one RTS step from regime ``j``'s filtered moments at
  ``t`` through regime ``k``'s transition ``(F_k, Q_k)`` of step ``t + 1`` to regime
  ``k``'s smoothed moments at ``t + 1``, then the ``M`` pairs into ``j`` collapsed to one
  Gaussian by moment matching (and all ``M^2`` into the mixture).

Kim's smoother makes two approximations: (1) given the regime at ``t + 1`` (and ``z_<=t``),
the later observations are taken to carry no more information about the regime at ``t``,
``P(s_t | s_{t+1}, z_<=T) ~ P(s_t | s_{t+1}, z_<=t)``: exact for a chain observed without
a continuous state (Hamilton's filter), approximate here because ``mu_{t+1}`` links ``t``
to the future; (2) the regime-conditional posteriors are single Gaussians (the filter's
moment matching, and the collapse above), where the exact posterior is a mixture over
regime histories. ``tests/test_smoother.py`` measures both against the exact smoother that
enumerates every history; they vanish as the observations pin the drift down.

Missing observations and irregular ``dt`` need nothing here: they are in the filtered
moments and in each step's ``(F, Q, Pi)`` (``Pi_t = expm(rates dt_t)`` for continuous-time
regimes). The pass is a ``lax.scan`` of fixed-size arithmetic: ``jit``, ``vmap`` and
``grad`` go through (reverse mode through the forward filter's own method).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core.inputs import prepare_dt, prepare_observations
from .._core.types import Array, DtLike, Float, Int, ObsLike, Scalar
from .._models.model import AbstractFilterResult, check_model
from .filter import run_filter
from .imm import IMMResult
from .methods import SEQUENTIAL, AbstractFilterMethod, resolve_method

__all__ = ["SmoothResult", "smooth"]


class SmoothResult(AbstractFilterResult):
    """What ``dj.smooth`` returns: moments given all the observations (leading axis ``T``).

    Every result's interface (``dj.AbstractFilterResult``) with smoothed values:
    ``drift`` ``[T]`` is ``E[mu_t | z_0..z_{T-1}]``, ``drift_var`` its variance,
    ``regime_probs`` ``[T, M]`` is ``P(regime_t | z_0..z_{T-1})``, ``p_crisis`` the crisis
    regime's; ``means`` ``[T, n]`` / ``covs`` ``[T, n, n]`` are the state's (``[mu]`` or
    ``[mu, mu_dot]``), ``model_means`` ``[T, M, n]`` / ``model_covs`` the per-regime ones.
    ``log_likelihood`` and ``log_likelihoods`` are the forward filter's, and ``filtered``
    is the forward filter's whole result. At the last step smoothed and filtered agree.
    """

    log_likelihood: Scalar
    log_likelihoods: Float[Array, " T"]
    means: Float[Array, "T n"]
    covs: Float[Array, "T n n"]
    regime_probs: Float[Array, "T M"]
    model_means: Float[Array, "T M n"]
    model_covs: Float[Array, "T M n n"]
    filtered: AbstractFilterResult
    crisis_index: int = eqx.field(static=True)

    @property
    def model_drifts(self) -> Float[Array, "*batch T M"]:
        """Each regime's smoothed drift ``E[mu_t | regime_t = j, z_<=T]``."""
        return self.model_means[..., 0]

    @property
    def most_likely_regimes(self) -> Int[Array, "*batch T"]:
        """The regime of highest smoothed probability at each step (a label per step)."""
        return jnp.argmax(self.regime_probs, axis=-1)


def smooth(
    model,
    zs: ObsLike,
    dt: DtLike,
    *,
    method: AbstractFilterMethod | str = SEQUENTIAL,
) -> SmoothResult:
    """Smooth a series: the drift and the regime probabilities given every observation.

    Runs the forward filter (``dj.filter(model, zs, dt, method=method)``), then a backward
    pass over its per-step outputs: Rauch-Tung-Striebel for a ``dj.KalmanModel`` (exact),
    Kim's (1994) approximate smoother for a ``dj.IMMModel`` (module docstring: it takes the
    regime at ``t`` to depend on later observations only through the regime at ``t + 1``,
    and each regime's posterior to be one Gaussian). Missing observations (NaN) and
    irregular ``dt`` are handled as by the filter, continuous-time regimes (``rates=``)
    through each step's ``expm(rates dt)``. ``jit``, ``vmap`` and ``grad`` go through.

    Arguments:
        model: a ``dj.KalmanModel`` or ``dj.IMMModel``.
        zs, dt: as for ``dj.filter`` (``[T]`` or ``[T, m]``; seconds, scalar or ``[T]``).
        method: how the forward filter runs and is differentiated, as for ``dj.filter``.

    Returns:
        A ``dj.SmoothResult``: ``drift``, ``drift_var``, ``means`` / ``covs`` (the full
        state), ``regime_probs`` ``[T, M]``, ``p_crisis``, ``model_means`` / ``model_covs``
        and the forward ``filtered`` result.

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> imm = dj.seed_imm(dj.Observation.scalar(4.0))
        >>> zs = np.concatenate([np.zeros(20), np.full(20, -40.0)])  # a cascade at step 20
        >>> sm = dj.smooth(imm, zs, 0.5)
        >>> sm.regime_probs.shape, sm.drift.shape
        ((40, 3), (40,))
        >>> bool(sm.p_crisis[19] > sm.filtered.p_crisis[19])  # hindsight sees it coming
        True
    """
    check_model(model)
    method = resolve_method(method, model)
    zs = prepare_observations(zs, model.num_features, model.dtype, model.observation.feature_names)
    dt = prepare_dt(dt, zs.shape[0], model.dtype)
    filtered = run_filter(model, zs, dt, method)
    return _backward(model, filtered, dt)


def regime_moments(result) -> tuple[Array, Array, Array]:
    """``(probs [T, M], means [T, M, n], covs [T, M, n, n])`` of a filter result: an IMM's
    per-regime moments, or a single model's as one regime."""
    if isinstance(result, IMMResult | SmoothResult):
        return result.regime_probs, result.model_means, result.model_covs
    return result.regime_probs, result.means[..., None, :], result.covs[..., None, :, :]


def _safe_div(a, b):
    """``a / b`` where ``b > 0``, else 0, with no NaN in the gradient."""
    pos = b > 0
    return jnp.where(pos, a / jnp.where(pos, b, 1.0), 0.0)


def _pair_step(x, P, F, Q, xs_next, Ps_next):
    """One RTS step from filtered ``(x, P)`` at ``t`` through ``(F, Q)`` to smoothed
    ``(xs_next, Ps_next)`` at ``t + 1``. A state component the transition resets (a scalar
    member's ``mu_dot``: a zero row of ``F`` and ``Q``) has predicted variance 0; the gain
    is the pseudo-inverse's there (column 0)."""
    xp = F @ x
    Pp = F @ P @ F.T + Q
    Pp = 0.5 * (Pp + Pp.T)
    n = x.shape[0]
    zero = jnp.diagonal(Pp) == 0
    Pp_safe = Pp + jnp.diag(jnp.where(zero, 1.0, 0.0))
    G = jnp.linalg.solve(Pp_safe, F @ P).T  # P F^T Pp^-1 (Pp symmetric)
    G = jnp.where(zero[None, :], 0.0, G) if n > 1 else G
    xs = x + G @ (xs_next - xp)
    Ps = P + G @ (Ps_next - Pp) @ G.T
    return xs, 0.5 * (Ps + Ps.T)


def _collapse(weights, means, covs):
    """Moment-matched Gaussian of a mixture: ``weights`` ``[K]`` summing to 1."""
    mean = jnp.einsum("k,kn->n", weights, means)
    d = means - mean[None, :]
    cov = jnp.einsum("k,kij->ij", weights, covs + d[:, :, None] * d[:, None, :])
    return mean, cov


@eqx.filter_jit
def _backward(model, filtered: AbstractFilterResult, dt) -> SmoothResult:
    probs, means, covs = regime_moments(filtered)
    T, M, n = means.shape
    dtype = means.dtype
    dts = jnp.broadcast_to(dt, (T,))
    Pis = model.transition_matrices(dt)
    Pis = jnp.broadcast_to(Pis, (T, M, M)).astype(dtype)
    Fs, Qs = model.stacked_transitions(dts)
    Fs, Qs = jnp.stack(Fs, axis=1), jnp.stack(Qs, axis=1)  # [T, M, n, n]

    def step(carry, x):
        ps_next, xs_next, Ps_next = carry
        w, mj, Pj, Pi, F, Q = x
        # x_jk, P_jk: from regime j at t through regime k's step t + 1 to k's smoothed t + 1
        pair = jax.vmap(  # over j
            jax.vmap(_pair_step, in_axes=(None, None, 0, 0, 0, 0)),  # over k
            in_axes=(0, 0, None, None, None, None),
        )
        x_jk, P_jk = pair(mj, Pj, F, Q, xs_next, Ps_next)  # [M, M, n], [M, M, n, n]
        pred = w @ Pi  # P(s_{t+1} = k | z_<=t)
        joint = w[:, None] * Pi * _safe_div(ps_next, pred)[None, :]  # P(s_t=j, s_t+1=k | all)
        ps = jnp.sum(joint, axis=1)
        cond = jax.vmap(_safe_div, in_axes=(0, None))(joint.T, ps).T  # P(k | j, all)
        # A regime of smoothed probability 0 keeps its filtered moments (weight 0 anyway).
        cond = jnp.where((ps > 0)[:, None], cond, jnp.eye(M, dtype=dtype))
        x_jk = jnp.where((ps > 0)[:, None, None], x_jk, mj[:, None, :])
        P_jk = jnp.where((ps > 0)[:, None, None, None], P_jk, Pj[:, None])
        xs, Ps = jax.vmap(_collapse)(cond, x_jk, P_jk)
        return (ps, xs, Ps), (ps, xs, Ps)

    last = (probs[-1], means[-1], covs[-1])
    # Step t reads the filtered moments at t and the chain and transitions of step t + 1.
    xs = (probs[:-1], means[:-1], covs[:-1], Pis[1:], Fs[1:], Qs[1:])
    _, (ps, ms, Ps) = jax.lax.scan(step, last, xs, reverse=True)
    ps = jnp.concatenate([ps, probs[-1:]])
    ms = jnp.concatenate([ms, means[-1:]])
    Ps = jnp.concatenate([Ps, covs[-1:]])
    mean, cov = jax.vmap(_collapse)(ps, ms, Ps)
    return SmoothResult(
        filtered.log_likelihood,
        filtered.log_likelihoods,
        mean,
        cov,
        ps,
        ms,
        Ps,
        filtered,
        model.crisis_index,
    )
