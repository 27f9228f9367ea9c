"""The IMM filter specialised to a scalar drift observed through one feature (``n = m = 1``).

The maths is the general cycle of ``_imm.py`` (same five steps, same results to rounding);
what changes is how it is written for XLA, which dominates the batched throughput on CPU
(DESIGN.md, performance principles):

- every quantity is a scalar per path (no ``[1]`` / ``[1, 1]`` arrays), so under ``vmap``
  the cycle is flat elementwise arithmetic over the batch, and its reverse-mode graph is
  about a third of the general one's;
- the mode probabilities ``w`` are carried normalised and the Bayes update is
  max-normalised: with ``g_j = -innov_j^2 / (2 S_j)`` and ``g* = max_j g_j`` over the
  reachable regimes (``cbar_j > 0``),

      cbar_j L_j = cbar_j S_j^{-1/2} exp(g_j - g*) exp(g*) / sqrt(2 pi),

  so ``log p(z | past) = g* + log sum_j cbar_j S_j^{-1/2} exp(g_j - g*) - log(2 pi) / 2``
  and ``w_j`` is the normalised summand. One ``log`` per step instead of seven: XLA's
  float64 ``log`` is a scalar libm call, the costliest operation of the cycle, while its
  ``exp`` is vectorised. The term of the best-fitting reachable regime is
  ``cbar_j S_j^{-1/2} >= cbar_j / sqrt(S_j)``, so the sum neither overflows nor underflows
  (a 1e8 outlier leaves finite probabilities on the simplex, ordered by fit) unless a
  predicted regime probability is itself below the smallest normal; an unreachable regime
  (``cbar_j = 0``, from a zero probability or ``Pi`` entry) gets weight 0 and no NaN in
  values or gradients;
- the mixing divides once per regime (``1 / cbar_j``), and the posterior variance uses the
  Joseph form written for scalars.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ._dynamics import stacked_transitions
from ._types import Array

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# sqrt of the smallest normal number, by item size (float32, float64).
_TINY = {4: 1.1754943508222875e-38, 8: 2.2250738585072014e-308}
_TINY_SQRT = {k: math.sqrt(v) for k, v in _TINY.items()}


def scalar_cycle(probs: list, means: list, variances: list, a: list, q: list, z, h, r, Pi):
    """One IMM cycle for scalar members and one feature; lists run over the M regimes.

    Arguments:
        probs: regime probabilities ``w_i`` after the last update (sum 1).
        means, variances: each regime's posterior drift mean and variance.
        a, q: each regime's transition ``F = a``, ``Q = q`` for this step.
        z: the observation (NaN: nothing observed, a pure prediction adding 0).
        h, r: loading and noise variance of the feature.
        Pi: the transition matrix ``[M, M]``.

    Returns:
        ``(probs, means, variances)`` after the update, and ``(log p(z | past), cbar)``.
    """
    M = len(probs)
    seen = ~jnp.isnan(z)
    new_means, new_vars, prefactor, quad, cbar = [], [], [], [], []
    for j in range(M):
        # (1) mixing: cbar_j = sum_i Pi_ij w_i; mu_{i|j} = Pi_ij w_i / cbar_j.
        x = [Pi[i, j] * probs[i] for i in range(M)]
        c = functools.reduce(jnp.add, x)
        # The derivative of x / c is -x / c^2: below sqrt(smallest normal) (1.5e-154 in
        # float64) c^2 underflows to 0 and the gradient is NaN. A regime whose predicted
        # probability is that small is treated as unreachable (values change by < 1e-154).
        reachable = c > _TINY_SQRT[c.dtype.itemsize]
        inv_c = 1.0 / jnp.where(reachable, c, 1.0)
        # An unreachable regime (cbar_j = 0) keeps its own state.
        mu = [jnp.where(reachable, x[i] * inv_c, float(i == j)) for i in range(M)]
        mean = functools.reduce(jnp.add, [mu[i] * means[i] for i in range(M)])
        var = functools.reduce(
            jnp.add, [mu[i] * (variances[i] + (means[i] - mean) ** 2) for i in range(M)]
        )
        # (2) predict.
        pm = a[j] * mean
        pv = a[j] * var * a[j] + q[j]
        # (3) Kalman update (Joseph form) and the Gaussian likelihood's factors.
        ph = pv * h
        inv_s = 1.0 / (h * ph + r)
        innov = jnp.where(seen, z - h * pm, 0.0)
        gain = jnp.where(seen, ph * inv_s, 0.0)
        ikh = 1.0 - gain * h
        new_means.append(pm + gain * innov)
        new_vars.append(ikh * pv * ikh + gain * r * gain)
        prefactor.append(jnp.where(seen, c * jnp.sqrt(inv_s), c))
        # A regime too unlikely to mix from (below sqrt(smallest normal)) still gets its
        # likelihood, as in the general cycle's log space: a sharp move can revive it. Only
        # below the smallest normal (its term could underflow to 0) does it drop out.
        alive = c > _TINY[c.dtype.itemsize]
        quad.append(jnp.where(alive, -0.5 * (innov * innov * inv_s), -jnp.inf))
        cbar.append(c)
    # (4) Bayes update, max-normalised (the shift cancels: no gradient through the max).
    top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, quad))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    terms = [p * jnp.exp(g - top) for p, g in zip(prefactor, quad, strict=True)]
    total = functools.reduce(jnp.add, terms)
    step_ll = jnp.where(seen, top + jnp.log(total) - _HALF_LOG_2PI, 0.0)
    # One reciprocal, not M divisions (which XLA would not fuse: ~1.5x the cycle's time).
    # A lone surviving term (an outlier) still normalises to exactly 1, with the gradient
    # of t / total.
    inv_total = 1.0 / total
    new_probs = [t * inv_total for t in terms]
    new_probs = [
        w + jax.lax.stop_gradient(jnp.where(t == total, 1.0 - w, 0.0))
        for w, t in zip(new_probs, terms, strict=True)
    ]
    return (new_probs, new_means, new_vars), (step_ll, cbar)


def scalar_imm_filter(model, zs: Array, dt: Array, checkpoint: bool, unroll: int):
    """``imm_filter`` for ``state_dim == 1``; ``zs`` ``[T, m]``, ``dt`` checked by the caller.

    With ``m > 1`` features the observations are first reduced, exactly, to one scalar
    observation per step with its own noise variance (``_reduction.py``); the filter's
    log-likelihood then adds back the reduction's ``log g_t``.
    """
    from ._imm import IMMResult

    M = model.num_regimes
    Pi = model.transition
    if model.num_features == 1:
        H, R = model.observation.matrices(1, model.dtype)
        h, ys, rs, log_g = H[0, 0], zs[:, 0], R[0, 0], None
    else:
        from ._reduction import reduce_to_scalar

        ys, rs, log_g = reduce_to_scalar(model.observation, zs)
        h = jnp.ones((), model.dtype)
    per_step_r = jnp.ndim(rs) == 1
    if dt.ndim == 0:
        Fs, Qs = model.transitions(dt)
        a, q = [F[0, 0] for F in Fs], [Q[0, 0] for Q in Qs]
        xs = (ys, rs) if per_step_r else ys
        unpack = (lambda x: (a, q, *x)) if per_step_r else (lambda x: (a, q, x, rs))
    else:
        stacked = [stacked_transitions(d, dt, 1) for d in model.dynamics]
        F_t = [F[:, 0, 0] for F, _ in stacked]
        Q_t = [Q[:, 0, 0] for _, Q in stacked]
        xs = (F_t, Q_t, ys, rs) if per_step_r else (F_t, Q_t, ys)
        unpack = (lambda x: x) if per_step_r else (lambda x: (*x, rs))

    def step(carry, x):
        a, q, z, r = unpack(x)
        state, total = carry
        state, (ll, cbar) = scalar_cycle(*state, a, q, z, h, r, Pi)
        w, means, variances = state
        # (5) the mixture output.
        mean = functools.reduce(jnp.add, [wj * mj for wj, mj in zip(w, means, strict=True)])
        var = functools.reduce(
            jnp.add,
            [wj * (vj + (mj - mean) ** 2) for wj, mj, vj in zip(w, means, variances, strict=True)],
        )
        outs = (
            ll,
            jnp.stack(w),
            jnp.stack(cbar),
            mean.reshape(1),
            var.reshape(1, 1),
            jnp.stack(means).reshape(M, 1),
            jnp.stack(variances).reshape(M, 1, 1),
        )
        return (state, _kahan_add(total, ll)), outs

    if checkpoint:
        step = jax.checkpoint(step, prevent_cse=False)
    init = (
        [model.init_probs[j] for j in range(M)],
        [model.init_mean[0]] * M,
        [model.init_cov[0, 0]] * M,
    )
    zero = jnp.zeros((), model.dtype)
    (_, (total, _)), outs = jax.lax.scan(step, (init, (zero, zero)), xs, unroll=unroll)
    lls, probs, pred_probs, means, covs, mmeans, mcovs = outs
    if log_g is not None:
        lls = lls + log_g
        total = total + jnp.sum(log_g)
    return IMMResult(total, lls, probs, pred_probs, means, covs, mmeans, mcovs, model.crisis_index)


def _kahan_add(total: tuple, x):
    """Compensated running sum ``(sum, compensation) + x`` (Kahan 1965): as accurate as
    summing the stacked per-step values, without storing them when only the total is
    used (a ``[T, B]`` buffer less per call: ~15% of the batched forward time)."""
    acc, comp = total
    y = x - comp
    new = acc + y
    return new, (new - acc) - y
