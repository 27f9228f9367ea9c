"""dj.fit's default optimiser (issue 11, item 3): L-BFGS stopped on the gradient norm in
free coordinates. The Nile local level with default settings lands within 1e-4 relative
of statsmodels' exact-diffuse MLE; `converged` means grad_norm <= gtol; running out of
steps reports a large grad_norm; checkpoint / resume with the L-BFGS state is bit for bit
an uninterrupted fit."""

import jax
import numpy as np
import pytest
import statsmodels.api as sm

import drift_jax as dj

NILE = sm.datasets.nile.load_pandas().data["volume"].to_numpy(float)  # T = 100


def _trainable(p):
    return (p.model.dynamics.sigma, p.model.observation.cov_chol)


# The local level: theta = 0 (held), Q = sigma^2 dt = sigma_eta^2 with dt = 1, R =
# sigma_eps^2. statsmodels' exact diffuse prior is approximated by init_cov = 1e10: the
# first observation's term then moves with the parameters only by O(R / 1e10).
START = dj.KalmanModel(dj.OU(0.0, 30.0), dj.Observation.scalar(10_000.0), 0.0, 1e10)


@pytest.fixture(scope="module")
def nile_mle():
    mod = sm.tsa.UnobservedComponents(NILE, "local level", use_exact_diffuse=True)
    res = mod.fit(disp=False, method="lbfgs", maxiter=1000, pgtol=1e-12, factr=10)
    eps2, eta2 = res.params  # sigma2.irregular, sigma2.level
    return eps2, eta2, res.llf


def _variances(res):
    return float(res.model.dynamics.sigma) ** 2, float(res.model.observation.cov[0, 0])


def test_nile_default_fit_lands_on_the_mle(nile_mle):
    eps2, eta2, llf = nile_mle
    # Durbin & Koopman's values (sigma_eps^2 15099, sigma_eta^2 1469.1): a real optimum.
    np.testing.assert_allclose([eps2, eta2], [15099.0, 1469.1], rtol=1e-4)
    res = dj.fit(START, NILE, 1.0, trainable=_trainable, progress=False)
    q, R = _variances(res)
    # Measured: 2.7e-7 (sigma_eta^2) and 4.2e-8 (sigma_eps^2) in 8 steps; Adam(1e-2), the
    # old default, stopped 3% away.
    np.testing.assert_allclose([q, R], [eta2, eps2], rtol=1e-4)
    assert bool(res.converged) and float(res.grad_norm) <= 1e-6
    assert int(res.num_steps) < 30 and res.stages == ("features",)
    # The loss is the same function up to the prior's constant: our optimum is no worse.
    mle = dj.KalmanModel(dj.OU(0.0, np.sqrt(eta2)), dj.Observation.scalar(eps2), 0.0, 1e10)
    assert float(dj.fit_loss(res.model, NILE, 1.0)) <= float(dj.fit_loss(mle, NILE, 1.0)) + 1e-12
    # grad_norm is the gradient of the loss in free coordinates at the returned model.
    params = dj.FitParams(res.model, None)
    mask = dj.trainable_mask(params, _trainable)
    raw = dj.unconstrain(params, mask)
    grad = jax.grad(lambda r: dj.fit_loss(dj.constrain(r, params).model, NILE, 1.0))(raw)
    flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad)])
    np.testing.assert_allclose(np.linalg.norm(flat), float(res.grad_norm), rtol=1e-6)


def test_converged_false_with_a_large_gradient_when_steps_run_out(nile_mle):
    short = dj.fit(START, NILE, 1.0, trainable=_trainable, steps=2, progress=False)
    assert int(short.num_steps) == 2 and not bool(short.converged)
    assert float(short.grad_norm) > 1e-3  # far from 1e-6 (measured: 0.04)
    # A looser gtol stops earlier, and says converged exactly when grad_norm <= gtol.
    loose = dj.fit(START, NILE, 1.0, trainable=_trainable, gtol=1e-2, progress=False)
    full = dj.fit(START, NILE, 1.0, trainable=_trainable, progress=False)
    assert bool(loose.converged) and float(loose.grad_norm) <= 1e-2
    assert int(loose.num_steps) < int(full.num_steps)
    # Its last step was not applied: its loss history stops at the step that met gtol.
    hist = np.asarray(loose.loss_history)
    k = int(loose.num_steps)
    assert np.all(np.isfinite(hist[: k + 1])) and np.all(np.isnan(hist[k + 1 :]))


def test_checkpoint_resume_with_the_lbfgs_state(tmp_path):
    path = tmp_path / "nile.eqx"
    opts = dict(trainable=_trainable, steps_per_call=4, progress=False)
    whole = dj.fit(START, NILE, 1.0, **opts)
    first = dj.fit(START, NILE, 1.0, steps=4, checkpoint=path, **opts)
    assert int(first.num_steps) == 4 and not bool(first.converged)
    resumed = dj.fit(START, NILE, 1.0, checkpoint=path, resume=True, **opts)
    assert bool(resumed.converged) and int(resumed.num_steps) == int(whole.num_steps)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
