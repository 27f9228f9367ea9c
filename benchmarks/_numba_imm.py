"""Hand-written numba IMM, the CPU peer of ``dj.filter`` on a 3-regime scalar IMM.

The same maths as drift_jax's IMM (docs/design.md "The model"; one cycle = mixing, OU predict
with ``F = exp(-theta dt)``, ``Q = sigma^2 dt``, scalar Kalman update, Bayes update of the
mode probabilities, mixture output), written as strongly as plain numba allows:

- the three regimes are unrolled into scalar locals and the cycle is one inlined function
  of scalars (no arrays, no allocation in the loop);
- ``prange`` runs over blocks of ``BLOCK`` paths and each thread advances its block one
  step at a time: one path's cycle is a serial chain of divisions, ``exp`` and ``log``
  (latency-bound), and interleaving independent paths lets the core overlap them;
- mode probabilities are carried normalised and the Bayes update is max-normalised in
  log space, ``log(cbar_j L_j) = log(cbar_j / sqrt(S_j)) - innov_j^2 / (2 S_j) - log(2 pi)/2``
  evaluated as ``cbar_j sqrt(1/S_j) exp(e_j - max_k e_k)``: three ``exp``, one ``log`` and
  three ``sqrt`` per path-step, the fewest transcendentals this maths needs (a 1e8 outlier
  cannot underflow every likelihood);
- the posterior variance is ``P- R / S`` (the Joseph form, simplified for a scalar state);
  ``fastmath=False`` keeps IEEE semantics, as XLA does by default.

A NaN observation is a pure prediction (adds 0 to the log-likelihood), as in drift_jax.
Kernels are built per dtype so that float32 stays float32 (numba would promote float32
arithmetic with Python float literals to float64).
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Paths one thread advances together (interleaved independent dependency chains).
BLOCK = 4

_CACHE: dict = {}


def _build(dtype, with_outputs: bool, block: int):
    f = np.dtype(dtype).type
    half = f(0.5)
    one = f(1.0)
    zero = f(0.0)
    half_log_2pi = f(0.5 * math.log(2.0 * math.pi))

    @numba.njit(inline="always", fastmath=False, error_model="numpy")
    def mixed(x0, x1, x2, c, j, m0, m1, m2, v0, v1, v2):
        # mu_{i|j} = Pi_ij w_i / cbar_j; an unreachable regime (cbar_j = 0) keeps its state.
        if c > zero:
            r = one / c
            u0, u1, u2 = x0 * r, x1 * r, x2 * r
        else:
            u0 = one if j == 0 else zero
            u1 = one if j == 1 else zero
            u2 = one if j == 2 else zero
        mm = u0 * m0 + u1 * m1 + u2 * m2
        d0, d1, d2 = m0 - mm, m1 - mm, m2 - mm
        return mm, u0 * (v0 + d0 * d0) + u1 * (v1 + d1 * d1) + u2 * (v2 + d2 * d2)

    @numba.njit(inline="always", fastmath=False, error_model="numpy")
    def cycle(z, w0, w1, w2, m0, m1, m2, v0, v1, v2, prm):
        (a0, a1, a2, aa0, aa1, aa2, q0, q1, q2, P00, P01, P02, P10, P11, P12, P20, P21, P22, h,
         hh, R) = prm  # fmt: skip
        # (1) mixing: cbar_j = sum_i Pi_ij w_i.
        x00, x10, x20 = P00 * w0, P10 * w1, P20 * w2
        x01, x11, x21 = P01 * w0, P11 * w1, P21 * w2
        x02, x12, x22 = P02 * w0, P12 * w1, P22 * w2
        c0 = x00 + x10 + x20
        c1 = x01 + x11 + x21
        c2 = x02 + x12 + x22
        mm0, vv0 = mixed(x00, x10, x20, c0, 0, m0, m1, m2, v0, v1, v2)
        mm1, vv1 = mixed(x01, x11, x21, c1, 1, m0, m1, m2, v0, v1, v2)
        mm2, vv2 = mixed(x02, x12, x22, c2, 2, m0, m1, m2, v0, v1, v2)
        # (2) predict.
        pm0, pm1, pm2 = a0 * mm0, a1 * mm1, a2 * mm2
        pv0, pv1, pv2 = aa0 * vv0 + q0, aa1 * vv1 + q1, aa2 * vv2 + q2
        if z != z:  # nothing observed: mix and predict only
            return c0, c1, c2, pm0, pm1, pm2, pv0, pv1, pv2, zero
        # (3) scalar Kalman update and Gaussian likelihood per regime.
        i0, i1, i2 = one / (hh * pv0 + R), one / (hh * pv1 + R), one / (hh * pv2 + R)
        e0, e1, e2 = z - h * pm0, z - h * pm1, z - h * pm2
        n0, n1, n2 = pm0 + pv0 * h * i0 * e0, pm1 + pv1 * h * i1 * e1, pm2 + pv2 * h * i2 * e2
        g0, g1, g2 = -half * e0 * e0 * i0, -half * e1 * e1 * i1, -half * e2 * e2 * i2
        # (4) Bayes update, max-normalised.
        top = max(g0, max(g1, g2))
        l0 = c0 * math.sqrt(i0) * math.exp(g0 - top)
        l1 = c1 * math.sqrt(i1) * math.exp(g1 - top)
        l2 = c2 * math.sqrt(i2) * math.exp(g2 - top)
        tot = l0 + l1 + l2
        r = one / tot
        return (
            l0 * r,
            l1 * r,
            l2 * r,
            n0,
            n1,
            n2,
            pv0 * R * i0,
            pv1 * R * i1,
            pv2 * R * i2,
            top + math.log(tot) - half_log_2pi,
        )

    @numba.njit(parallel=True, fastmath=False, error_model="numpy")
    def kernel(zs, prm, p_init, m_init, P_init, out_ll, out_drift, out_probs):
        B, T = zs.shape
        nblocks = (B + block - 1) // block
        for blk in numba.prange(nblocks):
            lo = blk * block
            K = min(block, B - lo)
            st = np.empty((10, block), zs.dtype)
            for k in range(K):
                st[0, k], st[1, k], st[2, k] = p_init[0], p_init[1], p_init[2]
                st[3, k] = st[4, k] = st[5, k] = m_init
                st[6, k] = st[7, k] = st[8, k] = P_init
                st[9, k] = zero
            for t in range(T):
                for k in range(K):
                    w0, w1, w2, m0, m1, m2, v0, v1, v2, ll = cycle(
                        zs[lo + k, t],
                        st[0, k],
                        st[1, k],
                        st[2, k],
                        st[3, k],
                        st[4, k],
                        st[5, k],
                        st[6, k],
                        st[7, k],
                        st[8, k],
                        prm,
                    )
                    st[0, k], st[1, k], st[2, k] = w0, w1, w2
                    st[3, k], st[4, k], st[5, k] = m0, m1, m2
                    st[6, k], st[7, k], st[8, k] = v0, v1, v2
                    st[9, k] += ll
                    if with_outputs:
                        # (5) mixture output.
                        out_drift[lo + k, t] = w0 * m0 + w1 * m1 + w2 * m2
                        out_probs[lo + k, t, 0] = w0
                        out_probs[lo + k, t, 1] = w1
                        out_probs[lo + k, t, 2] = w2
            for k in range(K):
                out_ll[lo + k] = st[9, k]

    return kernel


def imm_filter(
    zs,
    dt,
    theta,
    sigma,
    Pi,
    R,
    init_probs,
    init_mean,
    init_var,
    h=1.0,
    outputs=False,
    block=BLOCK,
):
    """Filter ``zs`` ``[B, T]`` with a scalar 3-regime IMM; returns ``log_likelihood [B]``
    (and ``drift [B, T]``, ``regime_probs [B, T, 3]`` with ``outputs=True``)."""
    dtype = zs.dtype
    f = dtype.type
    key = (dtype, outputs, block)
    if key not in _CACHE:
        _CACHE[key] = _build(dtype, outputs, block)
    a = np.exp(-np.asarray(theta, np.float64) * dt)
    q = np.asarray(sigma, np.float64) ** 2 * dt
    P = np.asarray(Pi, np.float64)
    prm = tuple(f(x) for x in (*a, *(a * a), *q, *P.ravel(), h, h * h, R))
    B, T = zs.shape
    out_ll = np.empty(B, dtype)
    shape_d, shape_p = ((B, T), (B, T, 3)) if outputs else ((1, 1), (1, 1, 3))
    out_drift = np.empty(shape_d, dtype)
    out_probs = np.empty(shape_p, dtype)
    _CACHE[key](
        zs,
        prm,
        np.asarray(init_probs, dtype),
        f(init_mean),
        f(init_var),
        out_ll,
        out_drift,
        out_probs,
    )
    return (out_ll, out_drift, out_probs) if outputs else out_ll
