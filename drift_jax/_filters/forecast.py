"""``dj.forecast``: the drift, the regimes and the price move ahead, in seconds.

From a filtered state (regime probabilities ``w_j`` and each regime's Gaussian ``N(m_j,
P_j)``) the model's own process is run forward with nothing observed, and its first two
moments are computed exactly. Per regime the drift follows its continuous-time law
(``dj.OU``: ``d mu = -theta mu dt + sigma dW``; ``dj.OUAccel``: ``[mu, mu_dot]``, ``d mu =
(-theta mu + mu_dot) dt + sigma dW_1``, ``d mu_dot = -theta_a mu_dot dt + sigma_a dW_2``),
which is the ``"exact"`` discretisation whatever the model's ``discretisation`` (the
filter's step between observations). The state is augmented with the integrated drift
``I_h = int_0^h mu_s ds`` (the expected price move over the horizon, in bps, since
``mu`` is in bps/s). For one regime these are the closed forms, e.g. for ``dj.OU``::

    E[mu_h] = m a,  a = e^{-theta h}
    Var[mu_h] = P a^2 + sigma^2 (1 - a^2) / (2 theta)
    E[I_h] = m (1 - a) / theta
    Var[I_h] = P ((1 - a) / theta)^2
               + sigma^2 / theta^2 (h - 2 (1 - a) / theta + (1 - a^2) / (2 theta))

(``theta -> 0``: ``m``, ``P + sigma^2 h``, ``m h``, ``P h^2 + sigma^2 h^3 / 3``).

Across regimes the unnormalised moments ``p_j``, ``E[y 1{s = j}]``, ``E[y y^T 1{s = j}]``
of the augmented state ``y = [x, I]`` evolve linearly, so the mixture's mean and
variance are exact too (not a Gaussian approximation of the mixture's shape), computed as
one matrix exponential of that linear system:

- continuous-time regimes (``rates=Q``): the regime switches at any time with rates
  ``Q``; within a regime its drift law applies. The filter discretises this by holding
  the regime over each step (``Pi = expm(Q dt)`` at the step's start); the two agree as
  ``dt -> 0``.
- a per-cycle ``Pi``: the chain moves only at cycle boundaries, so the forecast needs the
  cycle's length, ``cycle_seconds``. As in the filter's cycle (and ``dj.simulate``), each
  cycle starts with a switch: a horizon ``h > 0`` covers ``k = ceil(h / cycle_seconds)``
  switches, the ``j``-th at ``(j - 1) cycle_seconds``, and the drift evolves continuously
  in between; a horizon that is not a whole number of cycles ends inside the ``k``-th
  cycle, after its switch. So ``h = cycle_seconds`` is the filter's one-step prediction
  (exactly, for ``"exact"`` members) and the regime probabilities at ``h`` are ``w
  Pi^k``, constant on each ``((k - 1) c, k c]``.

A scalar member of an extended IMM holds ``mu_dot = 0`` (the filter's embedding): on
entering it ``mu_dot`` is reset to 0.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core import validate as v
from .._core.types import Array, Float
from .._models.dynamics import OU, OUAccel
from .._models.model import AbstractFilterResult, check_model
from .imm import IMMState
from .kalman import KalmanState
from .smoother import regime_moments

__all__ = ["Forecast", "forecast"]

#: Binary digits of the number of whole cycles a per-cycle forecast can cover (2^40).
_CYCLE_BITS = 40


class Forecast(eqx.Module):
    """What ``dj.forecast`` returns: moments ``h`` seconds ahead, nothing observed.

    The horizons' shape ``[H]`` (none for a scalar horizon) is the trailing axis of every
    field; ``step="all"`` puts the steps ``T`` in front.

    Attributes:
        horizons: the horizons in seconds.
        drift, drift_var: ``E[mu_{t+h} | z_<=t]`` (bps/s) and its variance (the mixture's,
            spread between regimes included).
        means, covs: the state's ``[..., n]`` / ``[..., n, n]`` (``[mu]`` or ``[mu,
            mu_dot]``).
        regime_probs: ``[..., M]``, ``P(regime at t + h | z_<=t)``.
        integrated_drift, integrated_drift_var: ``E[int_t^{t+h} mu_s ds | z_<=t]``, the
            expected price move over the horizon in bps, and its variance (bps^2; the
            drift's uncertainty only, not the return noise around it).
        drift_integrated_cov: ``Cov[mu_{t+h}, int_t^{t+h} mu_s ds]``.
        crisis_index: the crisis regime's index, -1 when there is none.
    """

    horizons: Float[Array, "..."]
    drift: Float[Array, "..."]
    drift_var: Float[Array, "..."]
    means: Float[Array, "..."]
    covs: Float[Array, "..."]
    regime_probs: Float[Array, "..."]
    integrated_drift: Float[Array, "..."]
    integrated_drift_var: Float[Array, "..."]
    drift_integrated_cov: Float[Array, "..."]
    crisis_index: int = eqx.field(static=True)

    @property
    def drift_std(self) -> Float[Array, "..."]:
        return jnp.sqrt(self.drift_var)

    @property
    def integrated_drift_std(self) -> Float[Array, "..."]:
        return jnp.sqrt(self.integrated_drift_var)

    @property
    def p_crisis(self) -> Float[Array, "..."]:
        """``P(Crisis)`` at each horizon (0 without a crisis regime)."""
        if self.crisis_index < 0:
            return jnp.zeros_like(self.drift)
        return self.regime_probs[..., self.crisis_index]


def forecast(model, result_or_state, horizons, *, step=-1, cycle_seconds=None) -> Forecast:
    """Forecast the drift, the regimes and the integrated drift ``horizons`` seconds ahead.

    Exact first and second moments of the model's process run forward with nothing
    observed (module docstring): each regime's drift by its continuous-time law (the OU
    closed forms), the mixture across regimes propagated by the regime chain, and the
    integrated drift ``int_0^h mu_s ds`` (the expected price move, bps) with its
    variance. Continuous-time regimes (``rates=``) switch at any time; a per-cycle ``Pi``
    switches at the start of each cycle of ``cycle_seconds``, ``ceil(h / cycle_seconds)``
    times over a horizon ``h`` (a horizon inside a cycle sees that cycle's switch).
    ``jit``, ``vmap`` and ``grad`` go through (in the model, the state and the horizons).

    Arguments:
        model: the ``dj.KalmanModel`` or ``dj.IMMModel`` that produced the state.
        result_or_state: a ``dj.filter`` result (forecast from its step ``step``), a
            ``dj.SmoothResult``, or a filter state (``dj.IMMState`` / ``dj.KalmanState``,
            e.g. a streaming estimator's ``.state``; ``est.forecast(h)`` does this).
        horizons: seconds ahead, a scalar or ``[H]``, each finite and ``>= 0`` (0 is the
            state itself).
        step: for a result, the index of the step to forecast from (default -1, the last)
            or ``"all"`` (every step: a leading axis ``T``).
        cycle_seconds: the cycle length of a per-cycle ``transition`` (required for an
            IMM with one; ignored for continuous-time regimes and a single model).

    Returns:
        A ``dj.Forecast``: ``drift``, ``drift_var``, ``regime_probs``, ``p_crisis``,
        ``integrated_drift``, ``integrated_drift_var``, ``means`` / ``covs`` at each horizon.

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(4.0))
        >>> res = dj.filter(model, np.full(50, -20.0), 0.5)
        >>> fc = dj.forecast(model, res, [0.0, 5.0])
        >>> m = float(res.drift[-1])
        >>> bool(np.allclose(fc.drift, [m, m * np.exp(-0.5)]))  # m e^{-theta h}
        True
        >>> bool(np.isclose(fc.integrated_drift[1], m * (1 - np.exp(-0.5)) / 0.1))
        True
    """
    check_model(model)
    dtype = model.dtype
    M, n = model.num_regimes, model.state_dim
    probs, means, covs = _state_moments(result_or_state, step, M, n)
    probs, means, covs = (jnp.asarray(x, dtype) for x in (probs, means, covs))
    h = _check_horizons(horizons, dtype)
    cycle = None
    if M > 1 and not model.transition_depends_on_dt:
        if cycle_seconds is None:
            raise ValueError(
                "`cycle_seconds` is required to forecast an IMM with a per-cycle `transition`: "
                "its chain switches once per cycle, so a horizon in seconds covers "
                "ceil(h / cycle_seconds) switches (pass the step length the filter ran at, "
                "e.g. cycle_seconds=0.1 at 10 Hz), or use continuous-time regimes (`rates=`)."
            )
        cycle = v.positive("cycle_seconds", cycle_seconds, dtype)
        cycle = v.scalar("cycle_seconds", cycle)
    return _forecast(model, probs, means, covs, h, cycle)


def _state_moments(x, step, M: int, n: int):
    """``(probs [..., M], means [..., M, n], covs [..., M, n, n])`` of a result or state."""
    if isinstance(x, IMMState):
        out = jnp.exp(x.log_probs), x.means, x.covs
    elif isinstance(x, KalmanState):
        out = jnp.ones(x.mean.shape[:-1] + (1,), x.mean.dtype), x.mean[..., None, :]
        out = (*out, x.cov[..., None, :, :])
    elif isinstance(x, AbstractFilterResult):
        probs, means, covs = regime_moments(x)
        if step == "all":
            out = probs, means, covs
        else:
            T = probs.shape[-2]
            allowed = f'an index in [-{T}, {T}) or "all"'
            t = v.integer("step", step, allowed, lambda i: -T <= i < T)
            out = probs[..., t, :], means[..., t, :, :], covs[..., t, :, :, :]
    else:
        raise v.ArgumentTypeError(
            "`result_or_state` must be a dj.filter / dj.smooth result or a filter state "
            f"(dj.IMMState, dj.KalmanState), got {type(x).__name__}."
        )
    if out[1].shape[-2:] != (M, n):
        raise ValueError(
            f"`result_or_state` holds {out[1].shape[-2]} regime(s) of state size "
            f"{out[1].shape[-1]}, but the model has M={M} regimes of state size n={n}: "
            "forecast with the model that produced it."
        )
    return out


def _check_horizons(horizons, dtype):
    h = v.as_float_array("horizons", horizons, dtype)
    if h.ndim > 1:
        raise ValueError(f"`horizons` must be a scalar or [H] (seconds), got shape {h.shape}.")
    return v.check(
        "horizons", h, lambda x: jnp.isfinite(x) & (x >= 0), "finite and >= 0 (seconds ahead)"
    )


def _continuous_law(dynamics, n: int):
    """``(A [n, n], N [n, n])`` of ``dx = A x dt + dW``, ``Cov(dW) = N dt``, embedded in a
    state of size ``n``; and the projection ``J`` a member applies on entry."""
    dtype = dynamics.dtype
    if isinstance(dynamics, OU):
        A = jnp.zeros((n, n), dtype).at[0, 0].set(-dynamics.theta)
        N = jnp.zeros((n, n), dtype).at[0, 0].set(dynamics.sigma**2)
        J = jnp.diag(jnp.zeros((n,), dtype).at[0].set(1.0))
        return A, N, J
    if isinstance(dynamics, OUAccel):
        N = jnp.diag(jnp.stack([dynamics.sigma**2, dynamics.sigma_accel**2]))
        return dynamics.drift_matrix(), N, jnp.eye(2, dtype=dtype)
    raise ValueError(
        f"dj.forecast knows the continuous-time law of dj.OU and dj.OUAccel members, not of "
        f"a {type(dynamics).__name__}."
    )


def _augment(A, N, J):
    """The laws for ``y = [x, I]``, ``dI = mu dt``."""
    n = A.shape[0]
    Aa = jnp.zeros((n + 1, n + 1), A.dtype).at[:n, :n].set(A).at[n, 0].set(1.0)
    Na = jnp.zeros((n + 1, n + 1), A.dtype).at[:n, :n].set(N)
    Ja = jnp.zeros((n + 1, n + 1), A.dtype).at[:n, :n].set(J).at[n, n].set(1.0)
    return Aa, Na, Ja


def _generators(model):
    """The linear system of the unnormalised moments: per regime the block ``[p_j,
    E[y 1_j] (n'), vec E[y y^T 1_j] (n'^2)]``. Returns ``(W, D)``: ``W`` the within-regime
    flow (block diagonal), ``D`` the entry projections (block diagonal), each ``[K, K]``."""
    n = model.state_dim
    k = n + 1
    blocks_w, blocks_d = [], []
    eye = jnp.eye(k, dtype=model.dtype)
    for d in model.regime_dynamics:
        A, N, J = _augment(*_continuous_law(d, n))
        size = 1 + k + k * k
        W = jnp.zeros((size, size), model.dtype)
        W = W.at[1 : 1 + k, 1 : 1 + k].set(A)
        W = W.at[1 + k :, 1 + k :].set(jnp.kron(A, eye) + jnp.kron(eye, A))
        W = W.at[1 + k :, 0].set(N.reshape(-1))
        D = jax.scipy.linalg.block_diag(jnp.ones((1, 1), model.dtype), J, jnp.kron(J, J))
        blocks_w.append(W)
        blocks_d.append(D)
    return jax.scipy.linalg.block_diag(*blocks_w), jax.scipy.linalg.block_diag(*blocks_d)


def _switch(D, C, size: int):
    """``C[i, j]`` (rates or probabilities) moving block ``i`` into block ``j``, projected."""
    return D @ jnp.kron(C.T, jnp.eye(size, dtype=C.dtype))


def _initial(probs, means, covs, D, k: int):
    """The unnormalised moments of the state (``[..., K]``)."""
    M, n = means.shape[-2:]
    pad_m = jnp.concatenate([means, jnp.zeros(means.shape[:-1] + (1,), means.dtype)], axis=-1)
    pad_c = jnp.zeros(covs.shape[:-2] + (k, k), covs.dtype).at[..., :n, :n].set(covs)
    second = pad_c + pad_m[..., :, None] * pad_m[..., None, :]
    p = probs[..., None]
    flat = (p[..., None] * second).reshape(second.shape[:-2] + (-1,))
    z = jnp.concatenate([p, p * pad_m, flat], axis=-1)
    z = z.reshape(z.shape[:-2] + (-1,))
    return jnp.einsum("ab,...b->...a", D, z)  # a scalar member's mu_dot is 0


def _cycle_propagator(W, S, h, cycle):
    """``E(r) S (E(c) S)^(k-1)``, ``k = ceil(h / c)``, ``r = h - (k - 1) c``; identity at 0."""
    dtype = W.dtype
    q = h / cycle
    # ceil, forgiving the rounding of h / c (1.1 / 0.1 = 11.000000000000002 is 11 cycles)
    k = jnp.ceil(q - 64 * jnp.finfo(dtype).eps * jnp.maximum(q, 1.0))
    k = jnp.maximum(k, 1.0)
    r = h - (k - 1.0) * cycle
    itype = jnp.int64 if dtype == jnp.float64 else jnp.int32
    whole = jnp.minimum(k - 1.0, 2.0**_CYCLE_BITS - 1).astype(itype)
    base = jax.scipy.linalg.expm(W * cycle) @ S

    def bit(b, carry):  # binary powering: (E(c) S)^(k-1) in _CYCLE_BITS squarings
        acc, base = carry
        acc = jnp.where((whole >> b) & 1 == 1, acc @ base, acc)
        return acc, base @ base

    eye = jnp.eye(W.shape[0], dtype=dtype)
    acc, _ = jax.lax.fori_loop(0, _CYCLE_BITS, bit, (eye, base))
    out = jax.scipy.linalg.expm(W * r) @ S @ acc
    return jnp.where(h > 0, out, jnp.eye(W.shape[0], dtype=dtype))


@eqx.filter_jit
def _forecast(model, probs, means, covs, h, cycle) -> Forecast:
    M, n = model.num_regimes, model.state_dim
    k = n + 1
    size = 1 + k + k * k
    W, D = _generators(model)
    hs = jnp.atleast_1d(h)
    if model.transition_depends_on_dt:  # continuous-time regimes: switch at any time
        G = W + _switch(D, model.rates, size)
        props = jax.vmap(lambda x: jax.scipy.linalg.expm(G * x))(hs)
    elif M == 1:
        props = jax.vmap(lambda x: jax.scipy.linalg.expm(W * x))(hs)
    else:
        S = _switch(D, model.transition_matrix(), size)
        props = jax.vmap(lambda x: _cycle_propagator(W, S, x, cycle))(hs)
    z0 = _initial(probs, means, covs, D, k)  # [..., K]
    z = jnp.einsum("hab,...b->...ha", props, z0).reshape(z0.shape[:-1] + (hs.shape[0], M, size))
    p = z[..., 0] if M > 1 else jnp.ones_like(z[..., 0])  # one regime: probability 1
    first = jnp.sum(z[..., 1 : 1 + k], axis=-2)
    second = jnp.sum(z[..., 1 + k :], axis=-2).reshape(first.shape + (k,))
    cov = second - first[..., :, None] * first[..., None, :]
    cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
    out = Forecast(
        hs,
        first[..., 0],
        cov[..., 0, 0],
        first[..., :n],
        cov[..., :n, :n],
        p,
        first[..., n],
        cov[..., n, n],
        cov[..., 0, n],
        model.crisis_index,
    )
    if jnp.ndim(h) == 0:  # a scalar horizon: no horizon axis
        out = _drop_horizon_axis(out, probs.ndim - 1)
    return out


def _drop_horizon_axis(out: Forecast, lead: int) -> Forecast:
    """Remove the length-1 horizon axis (at position ``lead``) of every field."""

    def drop(x):
        return jnp.squeeze(x, axis=lead) if x.ndim > lead else x

    return Forecast(
        jnp.squeeze(out.horizons, 0),
        drop(out.drift),
        drop(out.drift_var),
        drop(out.means),
        drop(out.covs),
        drop(out.regime_probs),
        drop(out.integrated_drift),
        drop(out.integrated_drift_var),
        drop(out.drift_integrated_cov),
        out.crisis_index,
    )
