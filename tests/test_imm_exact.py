"""The IMM against the exact regime posterior (all ``M^T`` histories, ``dj.exact_posterior``).

The IMM collapses the Gaussian mixture to one Gaussian per regime at every mixing step,
so it is exact at ``t = 0`` (the first mixing acts on identical priors) and when the
regimes are identical, and approximate otherwise. The approximation error on short
series (``T = 8``, ``M = 3``; 8 seeds per family, data simulated from the model itself,
half of the seed_imm series with a -10 bps/s cascade in the last 4 steps) was measured
as (max over seeds and steps, absolute):

=====================  ==============  ===============  =================  ============
family                 regime probs    total log-lik    per-step log-lik   drift
=====================  ==============  ===============  =================  ============
seed_imm, R = 1        0.0241          0.0157           0.0523             0.0374
random scalar models   0.0531          0.0207           0.0577             0.0613
seed_imm extended      0.0062          0.0102           0.0090             0.0061
=====================  ==============  ===============  =================  ============

(random scalar models: ``sigma_j = U(0.2, 0.6) 3^j``, ``theta ~ U(0.01, 1)``, ``Pi = 0.5 I +
0.5 Dirichlet``, ``R ~ U(0.3, 2)``, irregular ``dt ~ U(0.2, 1)``; seed_imm: ``dt = 0.5``).
The bounds asserted below (``BOUNDS``) are about twice those numbers.
"""

import equinox as eqx
import numpy as np
import pytest

import drift_jax as dj

T = 8
_filter = eqx.filter_jit(dj.filter)
_exact = eqx.filter_jit(dj.exact_posterior)

#: family -> (regime probs, total log-likelihood, per-step log-likelihood, drift)
BOUNDS = {
    "seed_imm": (0.05, 0.032, 0.105, 0.075),
    "random": (0.11, 0.042, 0.12, 0.125),
    "extended": (0.013, 0.021, 0.018, 0.013),
}


def _simulate(imm, dts, rng):
    """Data from the switching model itself: ``r_t ~ Pi[r_{t-1}]``, ``x_t = F x + w``."""
    Pi, p = np.asarray(imm.transition), np.asarray(imm.init_probs)
    H, R = (
        np.asarray(imm.observation.observation_matrix(imm.state_dim)),
        np.asarray(imm.observation.cov),
    )
    r, x, zs = rng.choice(len(p), p=p), np.zeros(imm.state_dim), []
    for dt in dts:
        r = rng.choice(len(p), p=Pi[r])
        F, Q = (np.asarray(a) for a in imm.transitions(dt))
        x = F[r] @ x + rng.multivariate_normal(np.zeros(len(x)), Q[r])
        zs.append(H @ x + rng.multivariate_normal(np.zeros(len(R)), R))
    return np.array(zs)[:, 0]


def _case(family, seed):
    rng = np.random.default_rng(seed)
    if family == "random":
        dyn = tuple(
            dj.OU(rng.uniform(0.01, 1.0), rng.uniform(0.2, 0.6) * 3.0**j) for j in range(3)
        )
        Pi = rng.dirichlet(np.ones(3), size=3) * 0.5 + 0.5 * np.eye(3)
        imm = dj.IMMModel(
            dyn,
            dj.Observation.scalar(rng.uniform(0.3, 2.0)),
            Pi,
            rng.dirichlet(np.ones(3)),
            rng.normal(),
            rng.uniform(0.5, 2.0),
        )
        dts = rng.uniform(0.2, 1.0, size=T)
    else:
        imm = dj.seed_imm(dj.Observation.scalar(1.0), extended=family == "extended")
        dts = np.full(T, 0.5)
    zs = _simulate(imm, dts, rng)
    if family != "random" and seed % 2:
        zs[T // 2 :] -= 10.0  # a cascade: the regimes disagree most
    return imm, zs, dts


def _errors(imm, zs, dts):
    a, b = _filter(imm, zs, dts), _exact(imm, zs, dts)
    return (
        a,
        b,
        (
            float(np.max(np.abs(a.regime_probs - b.regime_probs))),
            abs(float(a.log_likelihood - b.log_likelihood)),
            float(np.max(np.abs(a.log_likelihoods - b.log_likelihoods))),
            float(np.max(np.abs(a.drift - b.drift))),
        ),
    )


@pytest.mark.parametrize("family", ["seed_imm", "random", "extended"])
def test_imm_is_close_to_the_exact_posterior(family):
    worst = np.zeros(4)
    for seed in range(8):
        imm, zs, dts = _case(family, seed)
        a, b, errs = _errors(imm, zs, dts)
        worst = np.maximum(worst, errs)
        # Exact where it must be: the first step mixes identical priors.
        np.testing.assert_allclose(a.regime_probs[0], b.regime_probs[0], rtol=0, atol=1e-13)
        assert abs(float(a.log_likelihoods[0] - b.log_likelihoods[0])) < 1e-12
        np.testing.assert_allclose(a.drift[0], b.drift[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.drift_var[0], b.drift_var[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b.regime_probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    print(f"{family}: max |IMM - exact| probs, ll, step ll, drift = {worst}")
    assert np.all(worst <= np.array(BOUNDS[family])), (worst, BOUNDS[family])
    # The comparison is not vacuous: the approximation error is visible.
    assert worst[0] > 1e-4


def test_imm_equals_the_exact_posterior_for_identical_regimes():
    rng = np.random.default_rng(7)
    Pi = rng.dirichlet(np.ones(3), size=3)
    imm = dj.IMMModel((dj.OU(0.2, 1.3),) * 3, dj.Observation.scalar(0.8), Pi, [0.2, 0.5, 0.3])
    zs = rng.normal(size=T) * 2.0
    dts = rng.uniform(0.2, 1.0, size=T)
    a, b, errs = _errors(imm, zs, dts)
    assert max(errs) < 1e-12, errs
    np.testing.assert_allclose(a.drift_var, b.drift_var, rtol=1e-12, atol=1e-12)
