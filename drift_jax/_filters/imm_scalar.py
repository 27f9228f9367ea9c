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
from .loop_choice import loop_kind

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


def vector_cycle(state, a, q, z, h, r, Pi, robust=None):
    """``scalar_cycle`` with the regimes along one axis: ``state`` is ``(probs, moments)``,
    the probabilities ``[M]`` and ``moments`` ``[3, M]`` (the means and variances in its
    first two rows); ``a``, ``q`` are ``[M]`` (regime ``j`` at index ``j``).

    The same operations in the same order, on vectors (the sums over the regimes stay
    chains of adds over the ``M`` rows of ``Pi``, as in the scalar cycle); XLA fuses the
    two programs differently, so they agree to rounding (~1e-13 relative on the drift,
    tests/test_imm_vector_loop.py), as one series and the same series in a batch always
    did. What changes is what XLA:CPU makes of one series' loop, which it runs kernel by
    kernel (~70 ns each) unless one step touches fewer bytes than
    ``xla_cpu_small_while_loop_byte_threshold`` (1 kB; benchmarks/RESULTS.md, "kalman").
    The scalar cycle is ~45 kernels a step (every ``1 / x`` or ``exp`` that feeds several
    operations ends one, and every scalar of the carry is one), ~3 kB; this one is ~9
    kernels, ~1.05 kB: ~3.5x faster on one series. Batched it is slower (forward ~1.6x),
    so a batch runs the unrolled loop (``_filters/loop_choice.py``). Several features
    reduced to one (loading the constant 1) touch less and are under the threshold: the
    loop is compiled whole (~11x faster).

    Returns ``((probs, moments), log p(z | past))`` after the update, ``moments``
    ``[3, M]``: the means, the variances and the exponents ``g_j`` (read by no cycle).
    """
    probs, moments = state
    means, variances = moments[0], moments[1]
    M = probs.shape[0]
    seen, z, h, r = (x.reshape(()) for x in mask_missing(z[None], h[None, None], r[None, None]))
    # (1) mixing; x[i][j] = Pi_ij w_i, cbar_j = sum_i x[i][j] (see scalar_cycle).
    x = [Pi[i] * probs[i] for i in range(M)]
    c = functools.reduce(jnp.add, x)
    reachable = c > _TINY_SQRT[c.dtype.itemsize]
    inv_c = 1.0 / jnp.where(reachable, c, 1.0)
    mu = [x[i] * inv_c for i in range(M)]
    # ``combine``'s mixture, for a vector over j of scalar moments.
    mean = functools.reduce(jnp.add, [mu[i] * means[i] for i in range(M)])
    dev = [means[i] - mean for i in range(M)]
    var = functools.reduce(jnp.add, [mu[i] * (variances[i] + dev[i] * dev[i]) for i in range(M)])
    # An unreachable regime keeps its own state (mu_{i|j} = [i == j] in scalar_cycle, the
    # same values), selected here after the mixture: a one-hot vector of weights would be
    # a constant that XLA makes an input of the loop (24 bytes a step).
    mean = jnp.where(reachable, mean, means)
    var = jnp.where(reachable, var, variances)
    # (2) predict.
    pm = a * mean
    pv = a * var * a + q
    # (3) Kalman update (Joseph form) and the Gaussian likelihood's factors.
    ph = pv * h
    inv_s = 1.0 / (h * ph + r)
    # Stored once for the steps below (one array, one kernel): left to itself XLA
    # recomputes the mixing in each of them, re-reading the carry and Pi (~0.5 kB more
    # per step, over the loop threshold). The optimization barriers below only decide
    # what is stored; the arithmetic is unchanged.
    pm, pv, c, inv_s = jax.lax.optimization_barrier(jnp.stack([pm, pv, c, inv_s]))
    ph = pv * h
    innov = z - h * pm
    g = -0.5 * (innov * innov * inv_s)
    if robust is None:
        gain, r_j = ph * inv_s, r
    else:
        weight, log_ratio = robust_terms(robust, innov * innov * inv_s, seen)
        r_j = r / weight
        gain = ph / (h * ph + r_j)
        g = g + log_ratio
    ikh = 1.0 - gain * h
    new_means = pm + gain * innov
    new_vars = ikh * pv * ikh + gain * r_j * gain
    quad = jnp.where(c > _TINY[c.dtype.itemsize], g, -jnp.inf)
    # The carry's moments and the likelihood exponents, stored once (as above).
    moments = jax.lax.optimization_barrier(jnp.stack([new_means, new_vars, quad]))
    quad = moments[2]
    prefactor = c * jnp.sqrt(inv_s)
    # (4) Bayes update, max-normalised.
    top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, [quad[j] for j in range(M)]))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    terms = prefactor * jnp.exp(quad - top)
    total = functools.reduce(jnp.add, [terms[j] for j in range(M)])
    step_ll = jnp.where(seen, top + jnp.log(total) - _HALF_LOG_2PI, 0.0)
    new_probs = terms * (1.0 / total)
    new_probs = new_probs + jax.lax.stop_gradient(jnp.where(terms == total, 1.0 - new_probs, 0.0))
    return (new_probs, moments), step_ll


def scalar_imm_filter(model, zs: Array, dt: Array, adjoint, init: IMMState | None = None):
    """``imm_filter`` for ``state_dim == 1``; ``zs`` ``[T, m]``, ``dt`` checked by the caller;
    from ``init`` (``None``: the prior). Returns ``(IMMResult, IMMState after the last step)``.

    Two loops of the same arithmetic, equal to rounding (tests/test_imm_vector_loop.py):
    one series runs ``vector_cycle`` (few kernels a step: ~3.5x faster than the unrolled
    loop on one series of 1e5 steps, ~11x with 4 reduced features, whose loop XLA then
    compiles whole); a batch of series under ``vmap`` (Monte Carlo, fits over instruments,
    the chunks of ``dj.Chunked``) runs ``scalar_cycle`` unrolled over the regimes, whose
    batched forward is ~1.6x faster than the vector loop's (measured side by side on 2
    CPU cores). Which one runs is set by ``scalar_loop``.
    """
    if loop_kind() == "vector":
        return _vector_filter(model, zs, dt, adjoint, init)
    return _unrolled_filter(model, zs, dt, adjoint, init)


def _unrolled_filter(model, zs: Array, dt: Array, adjoint, init: IMMState | None = None):
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
        return (state, _kahan_add_pair(total, ll)), outs

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


def _vector_filter(model, zs: Array, dt: Array, adjoint, init: IMMState | None = None):
    """``imm_filter`` for ``state_dim == 1``; ``zs`` ``[T, m]``, ``dt`` checked by the caller;
    from ``init`` (``None``: the prior). Returns ``(IMMResult, IMMState after the last step)``.

    With ``m > 1`` features the observations are first reduced, exactly, to one scalar
    observation per step with its own noise variance (``_filters/reduction.py``); the filter's
    log-likelihood then adds back the reduction's ``log g_t``.

    The scan carries the regimes' probabilities, means and variances as ``[M]`` vectors and
    writes only them and the step's log-likelihood per step; the mixture output (step 5) and
    the predicted regime probabilities ``cbar`` are computed from them after the scan, for
    all steps at once (the same arithmetic as in the cycle): fewer buffers touched per step
    keep the loop under XLA's threshold for compiling it whole (``vector_cycle``).
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
    params["robust"] = model.observation.robust  # an explicit parameter, as every other
    regime_transitions(model, dt, params, xs)
    if dt.ndim == 0:
        Fs, Qs = model.transitions(dt)
        params.update(a=jnp.stack([F[0, 0] for F in Fs]), q=jnp.stack([Q[0, 0] for Q in Qs]))
    else:
        Fs, Qs = model.stacked_transitions(dt)
        xs.update(
            a=jnp.stack([F[:, 0, 0] for F in Fs], axis=-1),
            q=jnp.stack([Q[:, 0, 0] for Q in Qs], axis=-1),
        )

    def step(p, carry, x):
        e = {**p, **x}
        state, total = carry
        state, ll = vector_cycle(
            state, e["a"], e["q"], e["z"], e["h"], e["r"], e["Pi"], e["robust"]
        )
        return (state, _kahan_add(total, ll)), (ll, *state)

    if init is None:
        _, means0, variances0 = to_scalar(initial_state(model))
        # The prior's probabilities themselves, not exp(log p) of the state: exact, and a
        # zero probability keeps its own derivative.
        probs0 = model.init_probs
    else:
        probs0, means0, variances0 = to_scalar(init)
        probs0 = jnp.stack(probs0)
    # The exponents' row of the moments is an output of the cycle that no cycle reads.
    moments0 = jnp.stack([jnp.stack(means0), jnp.stack(variances0), jnp.zeros_like(probs0)])
    carry0 = ((probs0, moments0), jnp.zeros((2,), model.dtype))
    ((w, moments), kahan), outs = adjoint.scan(step, params, carry0, xs)
    total = kahan[0]
    m, var = moments[0], moments[1]
    lls, probs, mom = outs
    mmeans, mvars = mom[:, 0], mom[:, 1]
    # After the scan, for all steps at once: cbar_t = sum_i Pi_ij w_{t-1, i} (as the
    # cycle's mixing computes it) and the mixture output, step (5).
    Pi = xs.get("Pi", params.get("Pi"))
    prev = jnp.concatenate([probs0[None], probs[:-1]])
    Pij = (lambda i, j: Pi[:, i, j]) if Pi.ndim == 3 else (lambda i, j: Pi[i, j])
    pred_probs = jnp.stack(
        [functools.reduce(jnp.add, [Pij(i, j) * prev[:, i] for i in range(M)]) for j in range(M)],
        axis=-1,
    )
    # ``combine``'s mixture, written out for [T] columns (its ``_outer`` is for vectors).
    mean = functools.reduce(jnp.add, [probs[:, j] * mmeans[:, j] for j in range(M)])
    dev = [mmeans[:, j] - mean for j in range(M)]
    mvar = functools.reduce(
        jnp.add, [probs[:, j] * (mvars[:, j] + dev[j] * dev[j]) for j in range(M)]
    )
    if obs.log_g is not None:
        lls = lls + obs.log_g
        total = total + jnp.sum(obs.log_g)
    result = IMMResult(
        total,
        lls,
        probs,
        pred_probs,
        mean[:, None],
        mvar[:, None, None],
        mmeans[..., None],
        mvars[..., None, None],
        model.crisis_index,
    )
    return result, IMMState(_safe_log(w), m[:, None], var[:, None, None])


def _kahan_add(total, x):
    """Compensated running sum ``[sum, compensation] + x`` (Kahan 1965): as accurate as
    summing the stacked per-step values, without storing them when only the total is
    used (a ``[T, B]`` buffer less per call: ~15% of the batched forward time). One
    ``[2]`` vector, not two scalars: one kernel and one buffer less per step."""
    acc, comp = total[0], total[1]
    y = x - comp
    new = acc + y
    return jnp.stack([new, (new - acc) - y])


def _kahan_add_pair(total: tuple, x):
    """Compensated running sum ``(sum, compensation) + x`` (Kahan 1965): as accurate as
    summing the stacked per-step values, without storing them when only the total is
    used (a ``[T, B]`` buffer less per call: ~15% of the batched forward time)."""
    acc, comp = total
    y = x - comp
    new = acc + y
    return new, (new - acc) - y
