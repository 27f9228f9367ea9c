"""A NumPy IMM vectorised over paths: the peer a researcher writes without a compiler.

Same maths and formulation as ``_numba_imm.py`` (3 scalar OU regimes, one feature,
normalised mode probabilities, max-normalised Bayes update); arrays are ``[M, B]`` and
the time loop is a Python loop.
"""

from __future__ import annotations

import math

import numpy as np


def imm_filter(zs, dt, theta, sigma, Pi, R, init_probs, init_mean, init_var, h=1.0):
    """Filter ``zs`` ``[B, T]``; returns ``log_likelihood [B]``."""
    dtype = zs.dtype
    B, T = zs.shape
    Pi = np.asarray(Pi, dtype)
    M = Pi.shape[0]
    a = np.exp(-np.asarray(theta, np.float64) * dt).astype(dtype)[:, None]
    q = (np.asarray(sigma, np.float64) ** 2 * dt).astype(dtype)[:, None]
    h, R = dtype.type(h), dtype.type(R)
    half_log_2pi = dtype.type(0.5 * math.log(2.0 * math.pi))
    w = np.repeat(np.asarray(init_probs, dtype)[:, None], B, axis=1)
    m = np.full((M, B), init_mean, dtype)
    v = np.full((M, B), init_var, dtype)
    eye = np.eye(M, dtype=dtype)[:, :, None]
    ll = np.zeros(B, dtype)
    zs_t = np.ascontiguousarray(zs.T)
    for t in range(T):
        z = zs_t[t]
        # (1) mixing: x[i, j] = Pi_ij w_i, cbar_j = sum_i x[i, j].
        x = Pi[:, :, None] * w[:, None, :]
        c = x.sum(axis=0)
        reachable = c > 0
        u = np.where(reachable, x / np.where(reachable, c, 1), eye)
        mm = np.einsum("ijb,ib->jb", u, m)
        d = m[:, None, :] - mm[None, :, :]
        vv = np.einsum("ijb,ijb->jb", u, v[:, None, :] + d * d)
        # (2) predict, (3) scalar Kalman update.
        pm = a * mm
        pv = a * a * vv + q
        inv_s = 1 / (h * h * pv + R)
        seen = ~np.isnan(z)
        innov = np.where(seen, z - h * pm, 0)
        gain = np.where(seen, pv * h * inv_s, 0)
        m = pm + gain * innov
        v = (1 - gain * h) ** 2 * pv + gain * gain * R
        # (4) Bayes update, max-normalised.
        g = np.where(reachable, -0.5 * innov * innov * inv_s, -np.inf)
        top = g.max(axis=0)
        lik = np.where(seen, c * np.sqrt(inv_s), c) * np.exp(g - top)
        tot = lik.sum(axis=0)
        ll += np.where(seen, top + np.log(tot) - half_log_2pi, 0)
        w = lik / tot
    return ll
