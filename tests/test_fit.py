"""dj.fit / dj.fit_batch (issue 5, item 3): the MLE against statsmodels', recovery of the
return-risk parameters against an independent optimiser and the truth, constraints after
every step, fixed fields bit for bit, early stopping and checkpoint/resume bit for bit,
multi-start, batches equal separate fits, and bad input."""

import jax
import numpy as np
import optax
import pytest
from scipy.optimize import minimize

import drift_jax as dj

from .conftest import ou_features, sarimax_ou

# --- data: a scalar OU drift seen through one noisy feature (NumPy) -------------------------

T_K, DT_K = 1000, 1.0
THETA, SIGMA, R_TRUE = 0.2, 0.8, 1.5


def _ou_features(seed, T=T_K, dt=DT_K):
    return ou_features(seed, T, dt, THETA, SIGMA, R_TRUE)


ZS = _ou_features(0)
P0 = 1.0
START = dj.KalmanModel(dj.OU(0.5, 1.0), dj.Observation.scalar(2.0), 0.0, P0)
ADAM = optax.adam(0.05)  # one object: the compiled loop is shared by the tests below


def _fit(zs=ZS, **kwargs):
    # gtol=0: Adam's fits here stop on `steps` or `rtol` only, not on the gradient norm.
    options = dict(optimizer=ADAM, steps=300, gtol=0, progress=False) | kwargs
    return dj.fit(START, zs, DT_K, **options)


def _assert_bitwise(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_kalman_mle_equals_statsmodels():
    # gtol=0, rtol=0: all 100 L-BFGS steps run (to the floating-point floor).
    res = dj.fit(
        START, ZS, DT_K, optimizer=optax.lbfgs(), steps=100, gtol=0, rtol=0, progress=False
    )
    theta, sigma = float(res.model.dynamics.theta), float(res.model.dynamics.sigma)
    R = float(res.model.observation.cov[0, 0])

    # statsmodels' SARIMAX(1, 0, 0) + measurement error is the same model (Euler: F =
    # exp(-theta dt), Q = sigma^2 dt). Its prior is for the first observation itself, ours
    # is before a predict step; a leading missing observation with the known prior
    # N(0, P0) makes the two likelihoods identical for every parameter value.
    sarimax = sarimax_ou(ZS, P0)
    mle = sarimax.fit(
        start_params=[0.8, 1.5, 0.6], disp=False, method="lbfgs", maxiter=1000, pgtol=1e-12
    )
    phi, R_sm, q_sm = mle.params
    theta_sm, sigma_sm = -np.log(phi) / DT_K, np.sqrt(q_sm / DT_K)
    np.testing.assert_allclose([theta, sigma, R], [theta_sm, sigma_sm, R_sm], rtol=1e-4)
    # The same optimum of the same function: our loss at our optimum is no worse.
    assert float(res.losses_per_start[0]) <= -mle.llf / T_K + 1e-12
    assert abs(float(res.losses_per_start[0]) + mle.llf / T_K) < 1e-9
    # ... and near the truth (T = 1000: within ~3 standard errors).
    np.testing.assert_allclose([theta, sigma, R], [THETA, SIGMA, R_TRUE], rtol=0.15)
    # Adam reaches the same optimum.
    adam = _fit(rtol=0)
    np.testing.assert_allclose(adam.model.dynamics.theta, theta, rtol=1e-5)
    np.testing.assert_allclose(adam.model.observation.cov_chol, res.model.observation.cov_chol)


def test_fixed_fields_are_bit_identical_and_theta_zero_stays_zero():
    start = dj.KalmanModel(dj.OU(0.0, 1.0), dj.Observation.scalar(2.0), 0.3, 0.7)
    res = dj.fit(
        start,
        ZS,
        DT_K,
        trainable=lambda p: (p.model.dynamics.sigma, p.model.observation.cov_chol),
        optimizer=ADAM,
        steps=100,
        progress=False,
    )
    assert float(res.model.dynamics.theta) == 0.0
    _assert_bitwise(
        (res.model.dynamics.theta, res.model.observation.loadings),
        (start.dynamics.theta, start.observation.loadings),
    )
    _assert_bitwise((res.model.init_mean, res.model.init_cov), (start.init_mean, start.init_cov))
    assert float(res.model.dynamics.sigma) != 1.0  # the trainable ones did move
    assert res.loss_history[-1] < res.loss_history[0]


def test_early_stopping_equals_the_same_number_of_steps():
    stopped = _fit(rtol=1e-6, patience=3)
    k = int(stopped.num_steps)
    assert 10 < k < 300
    # A flat loss is not convergence: the gradient there is still well above dj.fit's
    # default gtol (1e-6), so the fit says it has not converged (measured: 1.3e-4).
    assert not bool(stopped.converged) and float(stopped.grad_norm) > 1e-5
    hist = np.asarray(stopped.loss_history)
    assert np.all(np.isfinite(hist[: k + 1])) and np.all(np.isnan(hist[k + 1 :]))
    # The stopping step's loss was recorded, its update not applied.
    plain = _fit(rtol=0, steps=k)
    assert int(plain.num_steps) == k and not bool(plain.converged)
    _assert_bitwise(stopped.model, plain.model)
    _assert_bitwise(hist[:k], np.asarray(plain.loss_history))
    np.testing.assert_allclose(np.abs(np.diff(hist[k - 3 : k + 1])), 0.0, atol=1e-6 * hist[k])


def test_checkpoint_then_resume_equals_an_uninterrupted_fit(tmp_path):
    path = tmp_path / "fit.eqx"
    whole = _fit(rtol=0)
    first = _fit(rtol=0, steps=100, checkpoint=path)
    assert path.exists() and int(first.num_steps) == 100
    resumed = _fit(rtol=0, steps=300, checkpoint=path, resume=True)
    _assert_bitwise(resumed, whole)
    # Resuming a finished fit runs nothing more and returns the same.
    _assert_bitwise(_fit(rtol=0, steps=300, checkpoint=path, resume=True), whole)
    # A checkpoint from another start is refused; a missing file starts afresh.
    other = dj.KalmanModel(dj.OU(0.4, 1.0), dj.Observation.scalar(2.0), 0.0, P0)
    with pytest.raises(ValueError, match="other starting values"):
        dj.fit(other, ZS, DT_K, optimizer=ADAM, steps=300, checkpoint=path, resume=True)
    fresh = _fit(rtol=0, steps=100, checkpoint=tmp_path / "new.eqx", resume=True)
    _assert_bitwise(fresh, first)
    with pytest.raises(ValueError, match="is at step 300, beyond steps=200"):
        _fit(rtol=0, steps=200, checkpoint=path, resume=True)


def test_multi_start_keeps_the_best():
    single = _fit(rtol=0)
    multi = _fit(rtol=0, n_starts=3, init_scale=0.5, key=jax.random.key(3))
    losses = np.asarray(multi.losses_per_start)
    assert losses.shape == (3,) and int(multi.best_start) == int(np.argmin(losses))
    # Start 0 is the given model: the same fit as a single start.
    np.testing.assert_allclose(losses[0], single.losses_per_start[0], rtol=1e-12)
    # The kept model is the one whose loss is reported.
    np.testing.assert_allclose(dj.fit_loss(multi.model, ZS, DT_K), losses.min(), rtol=1e-12)
    assert np.ptp(losses) > 0  # the starts differ


def test_fit_batch_equals_separate_fits():
    zs = np.stack([_ou_features(seed) for seed in (1, 2, 3)])
    batch = dj.fit_batch(
        START, zs, DT_K, optimizer=ADAM, steps=300, progress=False, rtol=0, gtol=0
    )
    assert batch.model.dynamics.theta.shape == (3,) and batch.loss_history.shape == (3, 300)
    for i in range(3):
        one = _fit(zs[i], rtol=0)
        got = jax.tree.map(lambda x, i=i: x[i], batch)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)  # measured: 5e-16


def test_progress_bar(capsys):
    res = _fit(steps=60, progress=True, steps_per_call=20)
    assert "dj.fit" in capsys.readouterr().err
    assert np.asarray(res.loss_history).shape == (60,)


# --- IMM: constraints hold after every step --------------------------------------------------

PI_STICKY = np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.02, 0.02, 0.96]])
TH_IMM, SG_IMM, R_IMM = np.array([0.10, 0.02, 0.005]), np.array([0.3, 1.0, 5.0]), 0.05


def _regime_path(T, seed, dt=1.0, sigma_base=10.0, amp=2.0):
    """A known regime path, the drift, one feature and returns whose vol over interval k is
    sigma_base (1 + amp 1{Crisis at step k - 1}) (the regime in force as it starts)."""
    rng = np.random.default_rng(seed)
    reg, mu = np.zeros(T, int), np.zeros(T)
    s, x = 0, 0.0
    for t in range(T):
        s = rng.choice(3, p=PI_STICKY[s]) if t else 0
        x = np.exp(-TH_IMM[s] * dt) * x + SG_IMM[s] * np.sqrt(dt) * rng.normal()
        reg[t], mu[t] = s, x
    zs = mu + np.sqrt(R_IMM) * rng.normal(size=T)
    before = np.concatenate([[0], reg[:-1]])
    vol = sigma_base * (1.0 + amp * (before == 2))
    returns = mu * dt + vol * np.sqrt(dt) * rng.normal(size=T)
    return zs, returns, reg


def _true_imm():
    dynamics = [dj.OU(t, s) for t, s in zip(TH_IMM, SG_IMM, strict=True)]
    return dj.IMMModel(dynamics, dj.Observation.scalar(R_IMM), PI_STICKY, crisis_regime=2)


def test_imm_constraints_hold_after_every_step(tmp_path):
    zs, _, _ = _regime_path(300, seed=5)
    start = dj.seed_imm(dj.Observation.scalar(0.5))
    path = tmp_path / "imm.eqx"
    big_steps = optax.adam(0.3)  # large steps: a naive parametrisation would leave the set
    prior = dj.sticky_prior(5.0)  # one object (a static argument of the compiled loop)
    losses = []
    for k in range(1, 13):
        # One step per call, resumed from the last: the model after every step.
        res = dj.fit(
            start,
            zs,
            1.0,
            optimizer=big_steps,
            steps=k,
            steps_per_call=1,
            checkpoint=path,
            resume=True,
            prior=prior,
            progress=False,
        )
        model = res.model
        Pi = np.asarray(model.transition)
        assert np.all(Pi >= 0)
        np.testing.assert_allclose(Pi.sum(axis=1), 1.0, rtol=0, atol=1e-14)
        R = np.asarray(model.observation.cov)
        assert np.all(np.linalg.eigvalsh(R) > 0)
        assert all(float(d.theta) > 0 and float(d.sigma) > 0 for d in model.dynamics)
        # the constructors' validation accepts every iterate
        dj.IMMModel(model.dynamics, dj.Observation(model.observation.loadings, R), Pi)
        assert not np.array_equal(Pi, np.asarray(start.transition))
        losses.append(float(res.losses_per_start[0]))
    history = np.asarray(res.loss_history)
    np.testing.assert_allclose(history[1:], losses[:-1], rtol=1e-12)  # resumed = one history
    assert losses[-1] < history[0] - 0.05  # the fit improves the loss markedly


# --- return loss: sigma_base and crisis_amplifier --------------------------------------------


def test_return_loss_recovers_sigma_base_and_crisis_amplifier():
    T = 2000
    zs, returns, reg = _regime_path(T, seed=0)
    imm = _true_imm()
    res = dj.fit(
        imm,
        zs,
        1.0,
        returns=returns,
        risk=dj.RiskModel(8.0, 1.0),
        trainable=lambda p: p.risk,  # the filter held at the truth
        optimizer=ADAM,
        steps=300,
        rtol=0,
        gtol=0,  # every step runs
        progress=False,
    )
    # Independent MLE of the same objective: the filter's drift and P(Crisis), SciPy's BFGS.
    out = dj.filter(imm, zs, 1.0)
    p, d = np.asarray(out.p_crisis)[:-1], np.asarray(out.drift)[:-1]

    def nll(y):
        sig = y[0] * (1.0 + y[1] * p)
        return np.sum(0.5 * (np.log(2 * np.pi * sig**2) + (returns[1:] - d) ** 2 / sig**2))

    mle = minimize(lambda x: nll(np.exp(x)), np.log([8.0, 1.0]), method="BFGS", tol=1e-12)
    best = np.exp(mle.x)
    fitted = np.array([float(res.risk.sigma_base), float(res.risk.crisis_amplifier)])
    np.testing.assert_allclose(fitted, best, rtol=1e-6)
    # Against the truth (10, 2), in standard errors from the observed information.
    h = 1e-4 * best
    H = np.empty((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * h[i], np.eye(2)[j] * h[j]
            H[i, j] = (
                nll(best + ei + ej)
                - nll(best + ei - ej)
                - nll(best - ei + ej)
                + nll(best - ei - ej)
            ) / (4 * h[i] * h[j])
    se = np.sqrt(np.diag(np.linalg.inv(H)))
    assert np.all(np.abs(fitted - [10.0, 2.0]) < 3 * se), (fitted, se)
    assert np.all(se < [0.3, 0.2])  # an informative test: crisis is ~17% of the steps
    assert 0.1 < np.mean(reg == 2) < 0.3
    # The filter was held fixed, bit for bit.
    _assert_bitwise(res.model, imm)


# --- bad input -------------------------------------------------------------------------------


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1"):
        dj.fit(START, ZS, DT_K, steps=0)
    with pytest.raises(ValueError, match="`n_starts` must be an integer >= 1"):
        dj.fit(START, ZS, DT_K, n_starts=1.5)
    with pytest.raises(ValueError, match="`rtol` must be finite and >= 0"):
        dj.fit(START, ZS, DT_K, rtol=-1.0)
    with pytest.raises(ValueError, match="need a starting `risk=dj.RiskModel"):
        dj.fit(START, ZS, DT_K, returns=ZS)
    with pytest.raises(ValueError, match="`resume=True` needs a `checkpoint`"):
        dj.fit(START, ZS, DT_K, resume=True)
    with pytest.raises(ValueError, match="`optimizer` must be an optax.GradientTransformation"):
        dj.fit(START, ZS, DT_K, optimizer="adam")
    with pytest.raises(ValueError, match="`trainable` selects no field"):
        dj.fit(START, ZS, DT_K, trainable=dj.FitParams(False, False))
    with pytest.raises(ValueError, match=r"`theta` \(\.model\.dynamics\.theta\) is trainable"):
        dj.fit(dj.KalmanModel(dj.OU(0.0, 1.0), dj.Observation.scalar(1.0)), ZS, DT_K)
    with pytest.raises(ValueError, match="`zs` must have shape"):
        dj.fit(START, ZS[:, None, None], DT_K)
    with pytest.raises(ValueError, match=r"`zs` must have shape \[N, T\]"):
        dj.fit_batch(START, ZS, DT_K)
    with pytest.raises(ValueError, match=r"`dt` must be a scalar, \[T\]"):
        dj.fit_batch(START, ZS.reshape(2, 500), np.ones(3))
    with pytest.raises(ValueError, match=r"`returns` must have shape \[N, T\]"):
        dj.fit_batch(START, ZS.reshape(2, 500), 1.0, returns=ZS, risk=dj.RiskModel())
    with pytest.raises(ValueError, match="unknown argument"):
        dj.fit_batch(START, ZS.reshape(2, 500), 1.0, stepz=3)
    with pytest.raises(ValueError, match="`model` must be a dj.KalmanModel"):
        dj.fit(dj.OU(0.1, 1.0), ZS, DT_K)
