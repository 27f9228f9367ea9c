"""The IMM filter specialised to a scalar drift observed through one feature (``n = m = 1``).

The maths is the general cycle of ``_filters/imm.py`` (same five steps, same results to rounding);
what changes is how it is written for XLA, which dominates the batched throughput on CPU
(docs/design.md, performance principles):

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

What it shares with the general cycle: the state type (``IMMState``: the filter starts
from ``initial_state(model)`` and the streaming estimator holds an ``IMMState``, seen here
through ``to_scalar`` / ``from_scalar``), the missing-data mask (``mask_missing``), the
m-feature reduction (``step_observations``) and the mixture output (``combine``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from .._core.types import Array
from .._models.observation import mask_missing
from .._models.robust import robust_terms
from .imm import (
    IMMResult,
    IMMState,
    _safe_log,
    combine,
    initial_state,
    regime_transitions,
    step_observations,
)

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# sqrt of the smallest normal number, by item size (float32, float64).
_TINY = {4: 1.1754943508222875e-38, 8: 2.2250738585072014e-308}
_TINY_SQRT = {k: math.sqrt(v) for k, v in _TINY.items()}


def to_scalar(state: IMMState) -> tuple[list, list, list]:
    """The scalar cycle's view of an ``IMMState``: per regime the probability ``w_j``, the
    drift mean and its variance (scalars)."""
    M = state.log_probs.shape[0]
    return (
        [jnp.exp(state.log_probs[j]) for j in range(M)],
        [state.means[j, 0] for j in range(M)],
        [state.covs[j, 0, 0] for j in range(M)],
    )


def from_scalar(log_probs: list, means: list, variances: list) -> IMMState:
    """An ``IMMState`` from the scalar cycle's per-regime log-probabilities and moments."""
    M = len(means)
    return IMMState(
        jnp.stack(log_probs), jnp.stack(means).reshape(M, 1), jnp.stack(variances).reshape(M, 1, 1)
    )


def scalar_cycle(
    probs: list,
    means: list,
    variances: list,
    a: list,
    q: list,
    z,
    h,
    r,
    Pi,
    *,
    log_weights=False,
    robust=None,
):
    """One IMM cycle for scalar members and one feature; lists run over the M regimes.

    Arguments:
        probs: regime probabilities ``w_i`` after the last update (sum 1).
        means, variances: each regime's posterior drift mean and variance.
        a, q: each regime's transition ``F = a``, ``Q = q`` for this step.
        z: the observation (NaN: nothing observed, a pure prediction adding 0).
        h, r: loading and noise variance of the feature.
        Pi: the transition matrix ``[M, M]``.
        log_weights: also return the new log-probabilities, kept finite (ordered by fit)
            where a probability underflows to 0, as the general cycle's are (the streaming
            estimator's state; the filter does not need them and skips their logs).
        robust: the observation's robust update (``_models/robust.py``), or ``None``
            (Gaussian). Each regime's update uses ``r / w(e_j)``, ``e_j^2 = innov_j^2 /
            S_j``, and its likelihood gains ``log f(e_j) - log phi(e_j)``.

    Returns:
        ``(probs, means, variances)`` after the update, ``(log p(z | past), cbar)`` and,
        with ``log_weights``, the list of new log-probabilities.
    """
    M = len(probs)
    # A missing observation: zero loading and unit noise, so zero gain, innovation 0 and
    # S = 1 (the likelihood's factors are then 1): a pure prediction.
    seen, z, h, r = (x.reshape(()) for x in mask_missing(z[None], h[None, None], r[None, None]))
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
        mean, var = combine(mu, means, variances)
        # (2) predict.
        pm = a[j] * mean
        pv = a[j] * var * a[j] + q[j]
        # (3) Kalman update (Joseph form) and the Gaussian likelihood's factors.
        ph = pv * h
        inv_s = 1.0 / (h * ph + r)
        innov = z - h * pm
        g = -0.5 * (innov * innov * inv_s)
        if robust is None:
            gain, r_j = ph * inv_s, r
        else:
            # The robust update: noise r / w(e), the likelihood's log f(e) - log phi(e).
            weight, log_ratio = robust_terms(robust, innov * innov * inv_s, seen)
            r_j = r / weight
            gain = ph / (h * ph + r_j)
            g = g + log_ratio
        ikh = 1.0 - gain * h
        new_means.append(pm + gain * innov)
        new_vars.append(ikh * pv * ikh + gain * r_j * gain)
        prefactor.append(c * jnp.sqrt(inv_s))
        # A regime too unlikely to mix from (below sqrt(smallest normal)) still gets its
        # likelihood, as in the general cycle's log space: a sharp move can revive it. Only
        # below the smallest normal (its term could underflow to 0) does it drop out.
        alive = c > _TINY[c.dtype.itemsize]
        quad.append(jnp.where(alive, g, -jnp.inf))
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
    out = (new_probs, new_means, new_vars), (step_ll, cbar)
    if not log_weights:
        return out
    # log w_j = log(prefactor_j) + g_j - g* - log(total): finite where w_j underflows.
    log_total = jnp.log(total)
    log_probs = [
        jnp.where(w > 0, jnp.log(w), jnp.log(p) + g - top - log_total)
        for w, p, g in zip(new_probs, prefactor, quad, strict=True)
    ]
    return (*out, log_probs)


def scalar_imm_filter(model, zs: Array, dt: Array, adjoint, init: IMMState | None = None):
    """``imm_filter`` for ``state_dim == 1``; ``zs`` ``[T, m]``, ``dt`` checked by the caller;
    from ``init`` (``None``: the prior). Returns ``(IMMResult, IMMState after the last step)``.

    With ``m > 1`` features the observations are first reduced, exactly, to one scalar
    observation per step with its own noise variance (``_filters/reduction.py``); the filter's
    log-likelihood then adds back the reduction's ``log g_t``.
    """
    M = model.num_regimes
    H, R = model.observation.matrices(1, model.dtype)
    obs = step_observations(H, R, model.observation.update, zs, reduce=True)
    # Every array a step reads that is not per step is an explicit parameter (a
    # hand-written adjoint differentiates only its explicit inputs); the rest is per step.
    params, xs = {"h": obs.H[0, 0]}, {"z": obs.zs[:, 0]}
    if obs.R is None:
        xs["r"] = obs.Rs[:, 0, 0]
    else:
        params["r"] = obs.R[0, 0]
    if model.observation.robust is not None:  # an explicit parameter, as every other
        params["robust"] = model.observation.robust
    regime_transitions(model, dt, params, xs)
    if dt.ndim == 0:
        Fs, Qs = model.transitions(dt)
        params.update(a=[F[0, 0] for F in Fs], q=[Q[0, 0] for Q in Qs])
    else:
        Fs, Qs = model.stacked_transitions(dt)
        xs.update(a=[F[:, 0, 0] for F in Fs], q=[Q[:, 0, 0] for Q in Qs])

    def step(p, carry, x):
        e = {**p, **x}
        state, total = carry
        state, (ll, cbar) = scalar_cycle(
            *state, e["a"], e["q"], e["z"], e["h"], e["r"], e["Pi"], robust=e.get("robust")
        )
        w, means, variances = state
        # (5) the mixture output.
        mean, var = combine(w, means, variances)
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

    zero = jnp.zeros((), model.dtype)
    if init is None:
        _, means0, variances0 = to_scalar(initial_state(model))
        # The prior's probabilities themselves, not exp(log p) of the state: exact, and a
        # zero probability keeps its own derivative.
        probs0 = [model.init_probs[j] for j in range(M)]
    else:
        probs0, means0, variances0 = to_scalar(init)
    carry0 = ((probs0, means0, variances0), (zero, zero))
    ((w, m, var), (total, _)), outs = adjoint.scan(step, params, carry0, xs)
    lls, probs, pred_probs, means, covs, mmeans, mcovs = outs
    if obs.log_g is not None:
        lls = lls + obs.log_g
        total = total + jnp.sum(obs.log_g)
    result = IMMResult(
        total, lls, probs, pred_probs, means, covs, mmeans, mcovs, model.crisis_index
    )
    return result, from_scalar([_safe_log(x) for x in w], m, var)


def _kahan_add(total: tuple, x):
    """Compensated running sum ``(sum, compensation) + x`` (Kahan 1965): as accurate as
    summing the stacked per-step values, without storing them when only the total is
    used (a ``[T, B]`` buffer less per call: ~15% of the batched forward time)."""
    acc, comp = total
    y = x - comp
    new = acc + y
    return new, (new - acc) - y
