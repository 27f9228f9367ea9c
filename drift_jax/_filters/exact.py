"""Exact regime posterior for short series by enumerating every regime history.

A switching linear-Gaussian model's exact filter is a Gaussian sum with ``M^T`` terms, one
per regime history (no collapsing). For short series this is the reference the IMM's
moment-matching approximation is measured against.
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core.inputs import prepare_dt, prepare_observations
from .._core.types import Array, Float, Scalar
from .._models.model import check_model
from .imm import _safe_log
from .kalman import KalmanState, kalman_step

#: Largest number of histories enumerated (``M^T``); beyond this use the IMM.
MAX_HISTORIES = 2_000_000


class ExactResult(eqx.Module):
    """Exact filtering posterior of a regime-switching model (leading axis ``T``)."""

    log_likelihood: Scalar
    log_likelihoods: Float[Array, " T"]
    regime_probs: Float[Array, "T M"]
    drift: Float[Array, " T"]
    drift_var: Float[Array, " T"]


def exact_posterior(model, zs, dt) -> ExactResult:
    """Exact ``p(regime_t | z_<=t)``, drift posterior and log-likelihood by enumeration.

    The model is the IMM's generative one: ``r_{-1} ~ init_probs``, ``r_t | r_{t-1} ~
    Pi[r_{t-1}]``, ``x_{-1} ~ N(init_mean, init_cov)``, ``x_t = F_{r_t} x_{t-1} + w_t``,
    ``z_t = H x_t + eps_t``. Cost is ``M^T`` Kalman filters (``T <= 8`` for ``M = 3`` is
    instant). Any drift model (``dj.AbstractDriftModel``): a ``dj.KalmanModel`` is the
    one-history case, its Kalman filter.

    Example:
        >>> import drift_jax as dj
        >>> imm = dj.seed_imm(dj.Observation.scalar(4.0))
        >>> ex = dj.exact_posterior(imm, [0.1, -3.0, -9.0], 0.5)
        >>> ex.regime_probs.shape
        (3, 3)
    """
    check_model(model)
    dtype = model.dtype
    if getattr(model.observation, "robust", None) is not None:
        raise ValueError(
            "dj.exact_posterior enumerates regime histories under Gaussian observation "
            f"noise; the model's observation has robust={model.observation.robust!r}. Use "
            "model.observation.with_robust(None) for the Gaussian reference."
        )
    zs = prepare_observations(zs, model.num_features, dtype, model.observation.feature_names)
    T = zs.shape[0]
    dt = prepare_dt(dt, T, dtype)
    M, n = model.num_regimes, model.state_dim
    if M**T > MAX_HISTORIES:
        longest = int(np.log(MAX_HISTORIES) / np.log(M))
        raise ValueError(
            f"`zs` is too long for exact enumeration: M^T = {M}^{T} = {M**T} histories exceeds "
            f"{MAX_HISTORIES}; use a shorter series (T <= {longest})."
        )
    histories = jnp.asarray(np.array(list(itertools.product(range(M), repeat=T))), jnp.int32)
    dts = jnp.broadcast_to(dt, (T,))
    Fs, Qs = (jnp.stack(x) for x in model.stacked_transitions(dts))  # [M, T, n, n]
    H, R = model.observation.matrices(n, dtype)
    update = model.observation.update
    # The chain's matrix of each step: Pi per cycle, or expm(Q dt_t) for rates.
    Pis = jnp.broadcast_to(model.transition_matrices(dts), (T, M, M))
    log_Pis = _safe_log(Pis)
    log_first = _safe_log(model.initial_regime_probs @ Pis[0])  # P(r_0)

    def one_history(h):
        steps = jnp.arange(1, T)
        log_prior = log_first[h[0]] + jnp.sum(log_Pis[steps, h[:-1], h[1:]])

        def step(state, t):
            F, Q = Fs[h[t], t], Qs[h[t], t]
            state, (ll, *_) = kalman_step(state, F, Q, zs[t], H, R, update)
            return state, (ll, state.mean[0], state.cov[0, 0])

        init = KalmanState(model.init_mean, model.init_cov)
        _, (lls, mus, vars_) = jax.lax.scan(step, init, jnp.arange(T))
        return log_prior, jnp.cumsum(lls), mus, vars_

    log_prior, cum_ll, mus, vars_ = jax.vmap(one_history)(histories)  # [K], [K, T] ...
    # Summing the full-history prior over the future regimes marginalises them exactly,
    # so weights over full histories with the likelihood up to t give p(r_<=t | z_<=t).
    log_w = log_prior[:, None] + cum_ll
    log_norm = jax.nn.logsumexp(log_w, axis=0)  # [T] = log p(z_<=t)
    w = jnp.exp(log_w - log_norm[None, :])
    onehot = jax.nn.one_hot(histories, M, dtype=dtype)  # [K, T, M]
    regime_probs = jnp.einsum("kt,ktm->tm", w, onehot)
    drift = jnp.sum(w * mus, axis=0)
    drift_var = jnp.sum(w * (vars_ + (mus - drift[None, :]) ** 2), axis=0)
    lls = jnp.diff(log_norm, prepend=jnp.zeros((1,), dtype))
    return ExactResult(log_norm[-1], lls, regime_probs, drift, drift_var)
