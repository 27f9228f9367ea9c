"""dj.standard_errors (issue 5, item 4): the Hessian against statsmodels' and against finite
differences, the delta method by hand, interval scales, non-identified parameters flagged
(provably flat likelihoods), the summary text, and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pandas import testing as pd_testing

import drift_jax as dj

from .conftest import ou_features, sarimax_ou

# --- data: a scalar OU drift seen through one noisy feature (NumPy) -------------------------

T, DT = 1500, 1.0
THETA, SIGMA, R_TRUE, P0 = 0.2, 0.8, 1.5, 1.0


def _ou_features(seed, T=T, dt=DT, m=1):
    return ou_features(seed, T, dt, THETA, SIGMA, R_TRUE, m)


ZS = _ou_features(0)


def _kalman(theta, sigma, R, P0=P0):
    return dj.KalmanModel(dj.OU(theta, sigma), dj.Observation.scalar(R), 0.0, P0)


@pytest.fixture(scope="module")
def sarimax():
    # SARIMAX(1, 0, 0) + measurement error is our model (Euler: phi = exp(-theta dt),
    # sigma2 = sigma^2 dt, measurement variance R). Its prior is for the first observation,
    # ours is before a predict step: a leading missing observation with the known prior
    # N(0, P0) makes the two likelihoods the same function (as in tests/test_fit.py).
    mod = sarimax_ou(ZS, P0)
    mle = mod.fit(
        start_params=[0.8, 1.5, 0.6],
        disp=False,
        method="lbfgs",
        maxiter=1000,
        pgtol=1e-12,
        cov_type="approx",  # the inverse of its own numerical Hessian of the likelihood
    )
    phi, R, q = mle.params
    model = _kalman(-np.log(phi) / DT, np.sqrt(q / DT), R)
    return mle, model


@pytest.fixture(scope="module")
def kalman_se(sarimax):
    return dj.standard_errors(sarimax[1], ZS, DT)


def test_covariance_equals_statsmodels(sarimax, kalman_se):
    mle, model = sarimax
    se = kalman_se
    assert list(se.table.index) == ["dynamics.theta", "dynamics.sigma", "observation.cov[0,0]"]
    assert se.table["identified"].all() and se.identified
    # Map our covariance of (theta, sigma, R) to statsmodels' (phi, R, sigma2).
    theta, sigma, R = se.table["estimate"]
    phi = math.exp(-theta * DT)
    D = np.array([[-DT * phi, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0 * sigma * DT, 0.0]])
    ours = D @ se.covariance.to_numpy() @ D.T
    theirs = np.asarray(mle.cov_params())
    # Measured: largest relative difference of the standard errors 9.6e-6, of the
    # covariance entries 2.7e-5 (statsmodels' numerical Hessian; ours is exact autodiff).
    np.testing.assert_allclose(np.sqrt(np.diag(ours)), mle.bse, rtol=1e-4)
    np.testing.assert_allclose(ours, theirs, rtol=3e-4)
    # At statsmodels' optimum: a Newton step is a tiny fraction of a standard error
    # (measured 1.3e-4).
    assert np.max(np.abs(se.newton_step)) < 1e-3
    assert se.objective == pytest.approx(-mle.llf, rel=1e-12)


def test_hessian_equals_finite_differences(kalman_se):
    se = kalman_se
    x0 = np.log([*se.table["estimate"][:2], math.sqrt(se.table["estimate"].iloc[2])])

    def nll(x):  # raw coordinates: log theta, log sigma, log sqrt(R)
        model = _kalman(math.exp(x[0]), math.exp(x[1]), math.exp(2.0 * x[2]))
        return float(dj.feature_nll(model, ZS, DT))

    h, n = 1e-3, 3
    fd = np.empty((n, n))
    f0 = nll(x0)
    for i in range(n):
        ei = np.eye(n)[i] * h
        fd[i, i] = (nll(x0 + ei) - 2.0 * f0 + nll(x0 - ei)) / h**2
        for j in range(i):
            ej = np.eye(n)[j] * h
            fd[i, j] = fd[j, i] = (
                nll(x0 + ei + ej) - nll(x0 + ei - ej) - nll(x0 - ei + ej) + nll(x0 - ei - ej)
            ) / (4 * h * h)
    # Measured: largest relative difference 2.1e-6 (the stencil's O(h^2) truncation).
    np.testing.assert_allclose(se.hessian, fd, rtol=1e-5)
    assert se.raw_names == (
        "log(dynamics.theta)",
        "log(dynamics.sigma)",
        "log(observation.cov_chol[0,0])",
    )
    np.testing.assert_allclose(se.hessian_eigenvalues, np.linalg.eigvalsh(fd), rtol=1e-5)
    w = se.hessian_eigenvalues
    assert se.condition_number == pytest.approx(w.max() / w.min())


def test_delta_method_by_hand_diagonal(kalman_se):
    se = kalman_se
    theta, sigma, R = se.table["estimate"]
    # theta = exp(x0), sigma = exp(x1), R = exp(2 x2): J = diag(theta, sigma, 2 R).
    J = np.diag([theta, sigma, 2.0 * R])
    by_hand = J @ np.linalg.inv(se.hessian) @ J.T
    np.testing.assert_allclose(se.covariance.to_numpy(), by_hand, rtol=1e-12)
    np.testing.assert_allclose(se.raw_covariance.to_numpy(), np.linalg.inv(se.hessian))
    # Log-scale interval = exp(x +- z se_x); 95% -> z = 1.959964.
    z = 1.959963984540054
    x = np.log([theta, sigma, math.sqrt(R)])
    se_x = np.sqrt(np.diag(np.linalg.inv(se.hessian)))
    low, high = np.exp(x - z * se_x), np.exp(x + z * se_x)
    low[2], high[2] = low[2] ** 2, high[2] ** 2  # R = (exp x2)^2
    np.testing.assert_allclose(se.table["ci_low"], low, rtol=1e-12)
    np.testing.assert_allclose(se.table["ci_high"], high, rtol=1e-12)
    np.testing.assert_allclose(se.table["std_err"], np.sqrt(np.diag(by_hand)), rtol=1e-12)
    np.testing.assert_allclose(se.table["z"], se.table["estimate"] / se.table["std_err"])
    assert list(se.table["scale"]) == ["log"] * 3


def test_level(sarimax, kalman_se):
    # A lower level gives a narrower interval with the same standard errors.
    se90 = dj.standard_errors(sarimax[1], ZS, DT, level=0.9)
    z90 = 1.6448536269514722
    est, s = kalman_se.table["estimate"], kalman_se.table["std_err"]
    np.testing.assert_allclose(se90.table["std_err"], s, rtol=1e-12)
    np.testing.assert_allclose(se90.table["ci_high"], est * np.exp(z90 * s / est), rtol=1e-12)
    assert "[0.05" in se90.summary() and "0.95]" in se90.summary()


def test_delta_method_by_hand_covariance_entries():
    # R of two correlated features is reported by its entries R00, R10, R11, not by the
    # Cholesky factor L that is trained: R00 = L00^2, R10 = L00 L10, R11 = L10^2 + L11^2
    # with free coordinates (log L00, L10, log L11).
    R = np.array([[2.0, 0.6], [0.6, 1.5]])
    zs = _ou_features(1, T=800, m=2)
    model = dj.KalmanModel(dj.OU(THETA, SIGMA), dj.Observation([1.0, 1.0], R), 0.0, P0)
    se = dj.standard_errors(model, zs, DT, trainable=lambda p: p.model.observation.cov_chol)
    assert list(se.table.index) == [
        "observation.cov[0,0]",
        "observation.cov[1,0]",
        "observation.cov[1,1]",
    ]
    L = np.linalg.cholesky(R)
    l00, l10, l11 = L[0, 0], L[1, 0], L[1, 1]
    J = np.array(
        [
            [2.0 * l00**2, 0.0, 0.0],
            [l00 * l10, l00, 0.0],
            [0.0, 2.0 * l10, 2.0 * l11**2],
        ]
    )
    by_hand = J @ np.linalg.inv(se.hessian) @ J.T
    np.testing.assert_allclose(se.covariance.to_numpy(), by_hand, rtol=1e-10)
    np.testing.assert_allclose(se.table["estimate"], [2.0, 0.6, 1.5], rtol=1e-12)
    assert list(se.table["scale"]) == ["log", "linear", "log"]
    # The off-diagonal entry gets the symmetric interval.
    z = 1.959963984540054
    s10 = math.sqrt(by_hand[1, 1])
    assert se.table.loc["observation.cov[1,0]", "ci_low"] == pytest.approx(0.6 - z * s10)
    assert se.table.loc["observation.cov[1,0]", "ci_high"] == pytest.approx(0.6 + z * s10)


def test_zero_loading_flags_theta_and_sigma():
    # With a loading of 0 the feature is pure noise, z ~ N(0, R): theta and sigma do not
    # enter the likelihood at all (a provably flat direction), R does, with the exact
    # observed information d2/drho2 = 2 sum z^2 / R in rho = log sqrt(R).
    zs = np.random.default_rng(2).normal(0.0, 2.0, T)  # T as above: compiled once
    R = 3.5
    model = dj.KalmanModel(dj.OU(0.3, 1.0), dj.Observation.scalar(R, loading=0.0))
    se = dj.standard_errors(model, zs, 1.0)
    t = se.table
    assert list(t["identified"]) == [False, False, True]
    assert not se.identified
    assert (
        t.loc[["dynamics.theta", "dynamics.sigma"], ["std_err", "ci_low", "ci_high"]]
        .isna()
        .all(axis=None)
    )
    info = 2.0 * np.sum(zs**2) / R
    assert t.loc["observation.cov[0,0]", "std_err"] == pytest.approx(2.0 * R / math.sqrt(info))
    assert se.condition_number == math.inf
    assert np.all(np.isnan(se.covariance.to_numpy()[:2]))
    text = se.summary()
    assert "Not identified" in text
    assert "dynamics.theta, dynamics.sigma" in text


def test_identical_regimes_flag_the_transition_matrix():
    # Two regimes with identical dynamics: every regime's filter is the same, so the
    # likelihood does not depend on Pi at all (flat), while R is identified.
    zs = _ou_features(3, T=400)
    imm = dj.IMMModel(
        (dj.OU(THETA, SIGMA), dj.OU(THETA, SIGMA)),
        dj.Observation.scalar(R_TRUE),
        [[0.9, 0.1], [0.2, 0.8]],
    )
    se = dj.standard_errors(
        imm, zs, DT, trainable=lambda p: (p.model.transition, p.model.observation.cov_chol)
    )
    t = se.table
    pi_names = ["transition[0,0]", "transition[0,1]", "transition[1,0]", "transition[1,1]"]
    assert list(t.index) == ["observation.cov[0,0]", *pi_names]  # the model's field order
    assert not t.loc[pi_names, "identified"].any()
    assert t.loc[pi_names, "std_err"].isna().all()
    assert t.loc["observation.cov[0,0]", "identified"]
    assert np.isfinite(t.loc["observation.cov[0,0]", "std_err"])
    # The same R as a single Kalman model (the two regimes are one): equal errors.
    kal = dj.standard_errors(
        dj.KalmanModel(dj.OU(THETA, SIGMA), dj.Observation.scalar(R_TRUE)),
        zs,
        DT,
        trainable=lambda p: p.model.observation.cov_chol,
    )
    assert t.loc["observation.cov[0,0]", "std_err"] == pytest.approx(
        kal.table["std_err"].iloc[0], rel=1e-8
    )
    assert "transition[0,0], transition[0,1], transition[1,0], transition[1,1]" in se.summary()


def test_distinct_regimes_are_identified_and_a_structural_zero_stays_fixed():
    # Distinct regimes with an absorbing second regime (a structural zero Pi[1,0] = 0); the
    # same structure as above (compiled once).
    zs = _ou_features(4, T=400)
    imm = dj.IMMModel(
        (dj.OU(THETA, SIGMA), dj.OU(0.01, 3.0)),
        dj.Observation.scalar(R_TRUE),
        [[0.95, 0.05], [0.0, 1.0]],
    )
    se = dj.standard_errors(
        imm, zs, DT, trainable=lambda p: (p.model.transition, p.model.observation.cov_chol)
    )
    t = se.table
    # Row 1 has no free coordinate: its zero stays 0.
    assert se.raw_names == (
        "log(observation.cov_chol[0,0])",
        "log(transition[0,1]/transition[0,0])",
    )
    assert t["identified"].all()
    assert np.all(se.hessian_eigenvalues > 0)
    assert t.loc["transition[1,0]", "estimate"] == 0.0
    assert t.loc["transition[1,0]", "std_err"] == 0.0
    assert t.loc["transition[1,0]", ["ci_low", "ci_high"]].tolist() == [0.0, 0.0]
    assert t.loc["transition[1,1]", ["ci_low", "ci_high"]].tolist() == [1.0, 1.0]
    # Row 0: both entries share one free coordinate, so one standard error (measured
    # 0.011); logit-scale intervals stay inside (0, 1) and mirror each other.
    s = t.loc[["transition[0,0]", "transition[0,1]"]]
    assert s["std_err"].iloc[0] == pytest.approx(s["std_err"].iloc[1], rel=1e-12)
    assert 0.005 < s["std_err"].iloc[0] < 0.02
    assert 0.0 < s["ci_low"].min() and s["ci_high"].max() < 1.0
    assert s["ci_low"].iloc[0] == pytest.approx(1.0 - s["ci_high"].iloc[1], rel=1e-12)
    p, sp = 0.05, s["std_err"].iloc[1]
    half = 1.959963984540054 * sp / (p * (1 - p))
    expit = lambda u: 1.0 / (1.0 + math.exp(-u))
    assert s["ci_low"].iloc[1] == pytest.approx(expit(math.log(p / (1 - p)) - half), rel=1e-12)
    assert list(t["scale"]) == ["log"] + ["logit"] * 4


def test_summary_lists_every_parameter(kalman_se):
    text = kalman_se.summary()
    assert str(kalman_se) == text
    for name in kalman_se.table.index:
        assert name in text
    for word in ("coef", "std err", "[0.025", "0.975]", "No. observations:", "1500"):
        assert word in text
    assert "Warnings" not in text  # identified, at the optimum
    row = next(line for line in text.splitlines() if line.startswith("dynamics.theta"))
    assert f"{kalman_se.table['estimate'].iloc[0]:.4f}" in row


def _fit_result(model, risk, n=None):
    """A dj.FitResult as dj.fit returns it (``n``: as dj.fit_batch, n instruments)."""
    lead = () if n is None else (n,)
    if n is not None:
        model, risk = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), (model, risk))
    arrays = (
        np.zeros((*lead, 3)),
        np.ones(lead, bool),
        np.full(lead, 3, np.int32),
        np.zeros(lead, np.int32),
        np.zeros((*lead, 1)),
    )
    return dj.FitResult(model, risk, *(jnp.asarray(a) for a in arrays))


def test_fit_result_and_returns():
    # A dj.FitResult brings its risk; with returns dj.fit's default (Kalman) also trains
    # sigma_base.
    rng = np.random.default_rng(5)
    returns = rng.normal(0.0, 3.0, T)
    model = _kalman(THETA, SIGMA, R_TRUE)
    se = dj.standard_errors(_fit_result(model, dj.RiskModel(3.2, 1.0)), ZS, DT, returns=returns)
    assert list(se.table.index) == [
        "dynamics.theta",
        "dynamics.sigma",
        "observation.cov[0,0]",
        "risk.sigma_base",
    ]
    # The return NLL is Gaussian in sigma_base given the filter's drift: the information in
    # log sigma_base is 2 sum (r - mu dt)^2 / (sigma^2 dt) over the T - 1 scored returns.
    drift = np.asarray(dj.filter(model, ZS, DT).drift)
    resid = returns[1:] - drift[:-1] * DT
    info = 2.0 * np.sum(resid**2) / (3.2**2 * DT)
    assert se.hessian[3, 3] == pytest.approx(info, rel=1e-10)
    same = dj.standard_errors(dj.FitParams(model, dj.RiskModel(3.2, 1.0)), ZS, DT, returns=returns)
    pd_testing.assert_frame_equal(same.table, se.table)


def test_bad_input():
    model = _kalman(THETA, SIGMA, R_TRUE)
    with pytest.raises(ValueError, match="`level` must be .* got level=1.5"):
        dj.standard_errors(model, ZS, DT, level=1.5)
    with pytest.raises(ValueError, match="`rcond` must be .* got rcond=-1"):
        dj.standard_errors(model, ZS, DT, rcond=-1)
    with pytest.raises(ValueError, match="`model` must be a dj.KalmanModel"):
        dj.standard_errors("model", ZS, DT)
    with pytest.raises(ValueError, match="need `risk="):
        dj.standard_errors(model, ZS, DT, returns=np.zeros(T))
    with pytest.raises(ValueError, match="`risk` was given but"):
        dj.standard_errors(dj.FitParams(model, dj.RiskModel()), ZS, DT, risk=dj.RiskModel())
    with pytest.raises(ValueError, match="`zs` must have shape"):
        dj.standard_errors(model, np.zeros((T, 2)), DT)
    with pytest.raises(ValueError, match="`dt` must be finite and >= 0"):
        dj.standard_errors(model, ZS, -1.0)
    with pytest.raises(ValueError, match="`returns` must have shape"):
        dj.standard_errors(model, ZS, DT, returns=np.zeros(3), risk=dj.RiskModel())
    with pytest.raises(ValueError, match="`trainable` selects no field"):
        dj.standard_errors(model, ZS, DT, trainable=False)
    with pytest.raises(ValueError, match="must start > 0"):
        dj.standard_errors(_kalman(0.0, SIGMA, R_TRUE), ZS, DT)
    with pytest.raises(ValueError, match="batched dj.FitResult"):
        dj.standard_errors(_fit_result(model, None, n=2), ZS, DT)
    with pytest.raises(ValueError, match="`prior` must be None or a callable"):
        dj.standard_errors(model, ZS, DT, prior=3.0)
    assert jax.config.jax_enable_x64  # the suite's numerics (conftest)
