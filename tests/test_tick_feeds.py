"""Real tick feeds (issue 15, items 2-6): named data matched by name, equal timestamps as
``dt = 0`` updates, the event-time drift proxy, no silent surprises, and the streaming step.

Each case first shows the problem as it was (the wrong-order log-likelihood, the biased
proxy, ...) with numbers, then the fix."""

import math
import subprocess
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import drift_jax as dj
from drift_jax._filters.streaming import _cycle, _pure_step

NAMES = dj.scenarios.DEFAULT_FEATURE_NAMES  # bim, dbim, bpg, sweep
OBS = dj.Observation(
    dj.scenarios.default_loadings(), dj.scenarios.default_feature_cov(), feature_names=NAMES
)
IMM = dj.seed_imm(OBS)


@pytest.fixture(scope="module")
def cascade():
    paths = dj.scenarios.liquidation_cascade(jax.random.key(3), 1, n_steps=400, start=20.0)
    zs = np.asarray(paths.features[0])
    return pd.DataFrame(zs, columns=list(NAMES)), zs


# --- item 2: feature names ------------------------------------------------------------------


def test_reordered_columns_give_the_same_log_likelihood(cascade):
    df, zs = cascade
    ordered = float(dj.filter(IMM, df, 0.1).log_likelihood)
    reordered = float(dj.filter(IMM, df[["sweep", "bpg", "bim", "dbim"]], 0.1).log_likelihood)
    # The bug: the same columns taken in the wrong order ran silently, with another value.
    wrong = float(dj.filter(IMM, zs[:, [3, 2, 0, 1]], 0.1).log_likelihood)
    assert ordered == float(dj.filter(IMM, zs, 0.1).log_likelihood)
    assert reordered == ordered  # matched by name: the same array, bit for bit
    assert wrong < ordered - 100.0, (ordered, wrong)
    # a dict of columns is named data too
    cols = {k: df[k].to_numpy() for k in ("dbim", "sweep", "bim", "bpg")}
    assert float(dj.filter(IMM, cols, 0.1).log_likelihood) == ordered


def test_missing_and_extra_columns_are_errors(cascade):
    df, _ = cascade
    with pytest.raises(
        ValueError, match=r"missing \['bpg'\]; got columns \['bim', 'dbim', 'sweep'\]"
    ):
        dj.filter(IMM, df.drop(columns="bpg"), 0.1)
    with pytest.raises(
        ValueError, match=r"do not match the model's feature_names .*extra \['price'\]"
    ):
        dj.filter(IMM, df.assign(price=100.0), 0.1)
    with pytest.raises(ValueError, match=r"missing \['sweep'\] and extra \['sweeep'\]"):
        dj.filter(IMM, df.rename(columns={"sweep": "sweeep"}), 0.1)
    with pytest.raises(TypeError, match=r"column 'bim' of `zs` must be numeric .*row 0: 'x'"):
        dj.filter(IMM, df.assign(bim=["x"] * len(df)), 0.1)


def test_model_without_names_takes_named_columns_in_order(cascade):
    df, zs = cascade
    plain = dj.seed_imm(dj.scenarios.default_observation())
    assert plain.observation.feature_names is None
    ll = float(dj.filter(plain, df, 0.1).log_likelihood)
    assert ll == float(dj.filter(plain, zs, 0.1).log_likelihood)
    with pytest.raises(ValueError, match=r"has 5 named column\(s\) .* declares no feature_names"):
        dj.filter(plain, df.assign(price=1.0), 0.1)


def test_feature_names_checked_and_carried_by_the_config(tmp_path):
    with pytest.raises(ValueError, match=r"`feature_names` must be None or 2 distinct names"):
        dj.Observation([1.0, 0.8], [1.0, 2.0], feature_names=["bim", "bim"])
    with pytest.raises(TypeError, match=r"`feature_names` must be None or 2 distinct names"):
        dj.Observation([1.0, 0.8], [1.0, 2.0], feature_names=[1, 2])
    cfg = dj.load_config(dj.save_config(tmp_path / "m.toml", IMM))
    assert cfg.model.observation.feature_names == NAMES == cfg.feature_names
    with pytest.raises(ValueError, match=r"differ from the model's observation.feature_names"):
        dj.config_to_toml(IMM, feature_names=["a", "b", "c", "d"])
    # a config written with names for a model without them gives the loaded model the names
    plain = dj.seed_imm(dj.scenarios.default_observation())
    text = dj.config_to_toml(plain, feature_names=NAMES)
    assert dj.config_from_toml(text).model.observation.feature_names == NAMES


def test_streaming_matches_named_observations_by_name(cascade):
    df, zs = cascade
    est = dj.IMMDriftEstimator(IMM)
    a = est.update_observation(zs[0], 0.1)
    row = df.iloc[0][["sweep", "bim", "bpg", "dbim"]]  # a pandas Series, reordered
    b = est.update_observation(row, 0.1)
    c = est.update_observation(dict(row.items()), 0.1)
    assert float(a.log_likelihood) == float(b.log_likelihood) == float(c.log_likelihood)
    with pytest.raises(ValueError, match=r"missing \['dbim'\]"):
        est.update_observation({"bim": 1.0, "bpg": 0.0, "sweep": 0.0}, 0.1)


def test_history_columns_follow_the_config_names(tmp_path, cascade):
    df, zs = cascade
    path = tmp_path / "h.csv"
    shuffled = df[["sweep", "bim", "bpg", "dbim"]].assign(time=0.1 * np.arange(1, 401), vol=1.0)
    shuffled.to_csv(path, index=False)
    h = dj.read_history(path, columns=list(NAMES))
    assert h.feature_names == NAMES and h.ignored_columns == ("vol",)
    assert np.array_equal(h.features, zs, equal_nan=True)
    # The same steps both sides (h.dt holds the CSV's time differences, which are 0.1 s
    # only to rounding): the reordered, name-matched columns give the same bits.
    assert float(dj.filter(IMM, h.features, h.dt).log_likelihood) == float(
        dj.filter(IMM, df, h.dt).log_likelihood
    )


# --- item 3: equal timestamps ---------------------------------------------------------------


@pytest.mark.parametrize(
    "dynamics",
    [dj.OU(0.3, 1.2), dj.OU(0.3, 1.2, "exact"), dj.OUAccel(0.2, 1.0, 0.5, 0.7)]
    + [dj.OUAccel(0.2, 1.0, 0.5, 0.7, "exact")],
)
def test_dt_zero_transition_is_identity_without_noise(dynamics):
    F, Q = dynamics.transition(0.0)
    n = dynamics.state_dim
    assert np.array_equal(np.asarray(F), np.eye(n)) and np.array_equal(np.asarray(Q), 0 * F)


@pytest.mark.parametrize("dynamics", [dj.OU(0.3, 1.2), dj.OUAccel(0.2, 1.0, 0.5, 0.7, "exact")])
def test_dt_zero_steps_equal_the_stacked_vector_update(dynamics):
    """Two observations at one time (dt = 0 for the second) filter as one observation of
    the two stacked (loadings concatenated, R block-diagonal), to 1e-12."""
    R = np.array([[4.0, 2.8], [2.8, 5.0]])
    obs = dj.Observation([1.0, 0.8], R)
    model = dj.KalmanModel(dynamics, obs, 0.5, 2.0)
    rng = np.random.default_rng(0)
    z = rng.normal(-3.0, 2.0, (6, 2))
    # rows 1 and 2 share a time, as do 3, 4 and 5
    res = dj.filter(model, z, np.array([0.4, 0.3, 0.0, 0.5, 0.0, 0.0]))
    stacked2 = dj.KalmanModel(
        dynamics, dj.Observation([1.0, 0.8] * 2, np.kron(np.eye(2), R)), 0.5, 2.0
    )
    stacked3 = dj.KalmanModel(
        dynamics, dj.Observation([1.0, 0.8] * 3, np.kron(np.eye(3), R)), 0.5, 2.0
    )
    est = dj.KalmanDriftEstimator(model).update_observation(z[0], 0.4)
    two = dj.KalmanDriftEstimator(stacked2, est.state, est.log_likelihood)
    two = two.update_observation(z[1:3].ravel(), 0.3)
    three = dj.KalmanDriftEstimator(stacked3, two.state, two.log_likelihood)
    three = three.update_observation(z[3:].ravel(), 0.5)
    for k, ref in ((2, two), (5, three)):
        err_mean = np.max(np.abs(np.asarray(res.means[k]) - np.asarray(ref.state.mean)))
        err_cov = np.max(np.abs(np.asarray(res.covs[k]) - np.asarray(ref.state.cov)))
        assert err_mean < 1e-12 and err_cov < 1e-12, (k, err_mean, err_cov)
    ll_steps = float(jnp.sum(res.log_likelihoods))
    assert abs(ll_steps - float(three.log_likelihood)) < 1e-12
    # the streaming estimator follows the same policy, step for step
    s = dj.KalmanDriftEstimator(model)
    for zk, dk in zip(z, [0.4, 0.3, 0.0, 0.5, 0.0, 0.0], strict=True):
        s = s.update_observation(zk, dk)
    assert abs(float(s.log_likelihood) - float(res.log_likelihood)) < 1e-12


def test_dt_zero_in_an_imm_is_one_cycle_of_the_chain():
    """A per-cycle Pi moves the chain one cycle at a dt = 0 step: the regime prediction is
    Pi^T p, the state is not predicted (F = I, Q = 0)."""
    imm = dj.seed_imm(dj.Observation.scalar(4.0))
    res = dj.filter(imm, np.array([[1.0], [np.nan]]), np.array([0.5, 0.0]))
    p1 = np.asarray(res.regime_probs[0])
    expected = np.asarray(imm.transition).T @ p1
    assert np.max(np.abs(np.asarray(res.regime_probs[1]) - expected)) < 1e-12
    # nothing observed, no prediction: the mixing moves the members' means towards each
    # other but keeps the mixture's mean and variance
    assert abs(float(res.drift[1] - res.drift[0])) < 1e-12
    assert abs(float(res.drift_var[1] - res.drift_var[0])) < 1e-12
    assert float(res.log_likelihoods[1]) == 0.0


def test_dt_zero_in_a_rates_imm_equals_the_stacked_vector_update():
    """With continuous-time regimes a dt = 0 step moves neither the chain (expm(Q 0) = I)
    nor the state: two observations at one time filter as one stacked observation of the
    step, in every regime and in the mode probabilities, to 1e-12."""
    Q = np.array([[-0.2, 0.15, 0.05], [0.1, -0.3, 0.2], [0.05, 0.25, -0.3]])
    dyn = (dj.OU(0.1, 0.3), dj.OU(0.02, 1.0), dj.OU(0.005, 5.0))
    one = dj.IMMModel(dyn, dj.Observation.scalar(4.0), rates=Q, regime_names=dj.REGIME_NAMES)
    two = dj.IMMModel(
        dyn, dj.Observation([1.0, 1.0], 4.0 * np.eye(2)), rates=Q, regime_names=dj.REGIME_NAMES
    )
    z = np.array([1.5, -0.5, 7.0, 6.0, -2.0])
    res = dj.filter(one, z, np.array([0.5, 0.8, 0.0, 0.7, 0.0]))
    ref = dj.filter(two, np.array([[1.5, np.nan], [-0.5, 7.0], [6.0, -2.0]]), [0.5, 0.8, 0.7])
    for k, r in ((0, 0), (2, 1), (4, 2)):
        for a, b in (
            (res.regime_probs[k], ref.regime_probs[r]),
            (res.model_means[k], ref.model_means[r]),
            (res.model_covs[k], ref.model_covs[r]),
        ):
            assert np.max(np.abs(np.asarray(a) - np.asarray(b))) < 1e-12, k
    assert abs(float(res.log_likelihood - ref.log_likelihood)) < 1e-12


def test_read_history_equal_timestamps(tmp_path):
    t = [0.0, 0.5, 0.5, 1.0, 1.5, 1.5, 1.5]
    df = pd.DataFrame({"time": t, "bim": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]})
    h = dj.read_history(df)
    assert h.dt.tolist() == [0.5, 0.5, 0.0, 0.5, 0.5, 0.0, 0.0]
    assert h.equal_times_rule == "equal timestamps: 3 step(s) of dt = 0 (updates, no prediction)"
    with pytest.warns(dj.DataWarning, match=r"dropped 3 row\(s\) .*: rows \[1, 4, 5\]"):
        last = dj.read_history(
            df.assign(r=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
            returns_column="r",
            equal_times="last",
        )
    assert last.features[:, 0].tolist() == [1.0, 3.0, 4.0, 7.0]
    assert np.allclose(last.returns, [0.1, 0.5, 0.4, 1.8], rtol=0, atol=1e-15)
    with pytest.raises(
        dj.HistoryError,
        match=r"strictly increasing; row 2 \(0\.5\) is not after "
        r"row 1 \(0\.5\).*equal_times='keep'",
    ):
        dj.read_history(df, equal_times="error")
    with pytest.raises(
        dj.HistoryError, match=r"must not decrease .* row 3 \(0\.2\) is before row 2"
    ):
        dj.read_history(df.assign(time=[0.0, 0.5, 0.5, 0.2, 1.5, 1.5, 1.5]))
    with pytest.raises(
        ValueError, match=r"`dt` must be finite and >= 0 \(seconds; 0 is an update"
    ):
        dj.filter(dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(1.0)), [1.0], -0.1)


# --- item 4: the drift proxy on event-time data ---------------------------------------------


def _event_time_history(seed=0, T=36_000, rate=5.0, theta=0.01, sigma=1.0, vol=0.3):
    """Poisson events at ``rate``/s, an OU drift (half-life 69 s), 4 independent features
    with loadings ALPHA, and a price whose log-returns are the drift plus noise."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, T))
    mu = np.empty(T)
    mu[0] = rng.normal(0.0, sigma / math.sqrt(2 * theta))
    for k in range(1, T):
        a = math.exp(-theta * (t[k] - t[k - 1]))
        mu[k] = a * mu[k - 1] + sigma * math.sqrt((1 - a * a) / (2 * theta)) * rng.normal()
    Z = mu[:, None] * ALPHA + rng.normal(size=(T, 4)) * np.array([8.0, 7.0, 5.0, 12.0])
    dts = np.diff(t, prepend=0.0)
    price = 100.0 * np.exp(np.cumsum(mu * dts + vol * np.sqrt(dts) * rng.normal(size=T)) / 1e4)
    return pd.DataFrame({"time": t, "price": price, **dict(zip(NAMES, Z.T, strict=True))})


ALPHA = np.array([1.0, 0.8, 0.5, 1.2])


def test_event_time_proxy_loadings_within_3_se_of_the_truth():
    df = _event_time_history()
    kw = dict(time_column="time", price_column="price", horizon=1.0)
    cal = dj.calibrate_observation(df, **kw)
    z = (cal.loadings - ALPHA) / cal.loading_se
    assert np.all(np.abs(z) < 3.0), (cal.loadings, cal.loading_se, z)
    # The bug: dividing by the nominal horizon, while the last event at or before t + h
    # covers ~80% of it, inflated the loadings by ~17% here (> 15 standard errors).
    y_old = dj.realised_drift(df["time"], df["price"], 1.0, per="horizon")
    old = dj.calibrate_observation(df[list(NAMES)], y_old)
    bias = old.loadings / ALPHA - 1.0
    assert np.all(bias > 0.10) and np.all((old.loadings - ALPHA) / old.loading_se > 10), bias
    # and the calibrated R has no cross-terms beyond sampling noise (the truth has none)
    off = cal.residual_corr[~np.eye(4, dtype=bool)]
    assert np.max(np.abs(off)) < 0.03, cal.residual_corr


def test_realised_drift_divides_by_the_elapsed_time():
    t, p = [0.0, 0.7, 1.6, 2.0], [100.0, 101.0, 102.0, 103.0]
    y = dj.realised_drift(t, p, 1.0)
    assert np.allclose(y[:2], [1e4 * 0.01 / 0.7, 1e4 * (102 / 101 - 1) / 0.9], rtol=1e-15)
    old = dj.realised_drift(t, p, 1.0, per="horizon")
    assert np.allclose(old[:2], [1e4 * 0.01, 1e4 * (102 / 101 - 1)], rtol=1e-15)
    with pytest.raises(ValueError, match=r"`per` must be one of \('elapsed', 'horizon'\)"):
        dj.realised_drift(t, p, 1.0, per="nominal")


# --- item 5: no silent surprises ------------------------------------------------------------


def test_float64_config_without_x64_warns(tmp_path):
    path = dj.save_config(tmp_path / "m.toml", IMM)
    with jax.enable_x64(False):
        with pytest.warns(dj.DataWarning, match=r'dtype = "float64" but JAX\'s x64 mode is off'):
            cfg = dj.load_config(path)
        assert cfg.model.dtype == jnp.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dj.load_config(path).model.dtype == jnp.float64  # x64 on: no warning


def test_config_edited_to_float32_names_the_dtype():
    text = dj.config_to_toml(IMM).replace('dtype = "float64"', 'dtype = "float32"')
    with pytest.raises(
        dj.ConfigError,
        match=r"`observation.cov` disagrees with cov_cholesky .* The file's dtype is float32: "
        r"cov_cholesky rounded to float32 no longer gives cov",
    ):
        dj.config_from_toml(text)


def test_hand_rounded_transition_normalise():
    text = dj.config_to_toml(IMM).replace("[0.95, 0.04, 0.01]", "[0.95, 0.04, 0.010000001]")
    with pytest.raises(
        dj.ConfigError,
        match=r"`transition` must be row-stochastic: .* row sums \[1.000000001, 1.0, 1.0\]\. "
        r"row\(s\) \[0\] of `transition` sum to \[1.00000000\d+\] \(hand-rounded\?\): load "
        r"with normalise=True",
    ):
        dj.config_from_toml(text)
    with pytest.warns(
        dj.DataWarning,
        match=r"row\(s\) \[0\] of `transition` summed to "
        r"\[1.00000000\d+\]; divided by their sums \(normalise=1e-06\)",
    ):
        cfg = dj.config_from_toml(text, normalise=True)
    row = np.asarray(cfg.model.transition)[0]
    assert abs(math.fsum(row.tolist()) - 1.0) <= 2.3e-16
    assert abs(row[2] - 0.010000001 / 1.000000001) < 1e-17
    far = dj.config_to_toml(IMM).replace("[0.95, 0.04, 0.01]", "[0.95, 0.04, 0.02]")
    with pytest.raises(
        dj.ConfigError,
        match=r"row\(s\) \[0\] sum to \[1.01\], further from 1 "
        r"than normalise=1e-06: not a rounding",
    ):
        dj.config_from_toml(far, normalise=True)


def test_overflowing_inputs_are_errors_naming_the_step():
    model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(4.0), 0.0, 1.0)
    zs = np.array([1.0, 2.0, 1e300, 3.0])
    with pytest.raises(
        ValueError,
        match=r"`zs` at step 2, feature 0 \(1e\+300\) is too large "
        r"for the filter in float64: \|z\| must be < sqrt\(max\) = 1\.34e\+154",
    ):
        dj.filter(model, zs, 0.1)
    m32 = dj.KalmanModel(
        dj.OU(np.float32(0.1), np.float32(1.0)),
        dj.Observation(np.float32([1.0]), np.float32([[4.0]])),
        np.float32(0.0),
        np.float32(1.0),
    )
    with pytest.raises(
        ValueError,
        match=r"step 1, feature 0 \(1e\+20\) is too large for the "
        r"filter in float32",
    ):
        dj.filter(m32, np.array([1.0, 1e20]), 0.1)
    with pytest.raises(ValueError, match=r"step 0, feature 0 \(1e\+39\) overflows float32"):
        dj.filter(m32, np.array([1e39, 1.0]), 0.1)
    with pytest.raises(
        ValueError,
        match=r"update 0 \(z=\[1e\+300\], dt=0\.1\) made the "
        r"filter's state non-finite",
    ):
        dj.KalmanDriftEstimator(model).update_observation(1e300, 0.1)


def test_check_finite_names_the_first_bad_step():
    model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(4.0), 0.0, 1.0)
    zs = np.array([1.0, 2.0, 3.0, 4.0])
    res = dj.filter(model, zs, 0.1)
    assert dj.check_finite(res) is res
    bad = eqx.tree_at(lambda r: r.means, res, res.means.at[2:, 0].set(jnp.nan))
    with pytest.raises(
        ValueError,
        match=r"the filter's outputs are not finite from step 2 on "
        r"\(drift=nan, .*\); its input z=\[3\.0\], dt=0\.1",
    ):
        dj.check_finite(bad, zs, 0.1)
    batch = jax.tree.map(lambda a, b: jnp.stack([a, b]), res, bad)
    with pytest.raises(ValueError, match=r"from step 2 of path 1 on"):
        dj.check_finite(batch)


def test_csv_missing_markers_are_reported(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("time,bim,dbim\n0.0,1.5,n/a\n0.5,NULL,2.0\n1.0,0.1,0.3\n1.5,n/a,n/a\n")
    with pytest.warns(
        dj.DataWarning,
        match=r"read as missing \(NaN\): column 'bim': 2 cell\(s\) "
        r"\['NULL', 'n/a'\] at rows \[1, 3\]; column 'dbim': 2 cell\(s\) \['n/a'\] "
        r"at rows \[0, 3\]",
    ):
        h = dj.read_history(path)
    assert np.array_equal(
        h.features, [[1.5, np.nan], [np.nan, 2.0], [0.1, 0.3], [np.nan, np.nan]], equal_nan=True
    )
    path.write_text("time,bim\n0.0,1.5\n0.5,\n")  # an empty cell is the documented marker
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(dj.read_history(path).features[1, 0])


def test_strings_are_type_errors_before_tracing():
    """Outside the test run's jaxtyping hook (which would catch them first): a subprocess."""
    code = (
        "import drift_jax as dj\n"
        "m = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(1.0))\n"
        "for zs, dt in (('1.0 2.0', 0.1), ([1.0, 2.0], '0.1'), ([['a', 'b']], 0.1)):\n"
        "    try:\n"
        "        dj.filter(m, zs, dt)\n"
        "    except TypeError as e:\n"
        "        print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines == [
        "ArgumentTypeError `zs` must be an array of numbers [T] or [T, m] (or a DataFrame of "
        "the model's features), got '1.0 2.0'.",
        "ArgumentTypeError `dt` must be a step length in seconds: a number or an array [T] of "
        "numbers, got '0.1'.",
        "ArgumentTypeError `zs` must be an array of numbers [T] or [T, m] (or a DataFrame of "
        "the model's features), got an array of dtype <U1 (list).",
    ], out.stdout + out.stderr


# --- item 6: streaming ----------------------------------------------------------------------


def test_second_estimator_of_the_same_shape_does_not_compile(cascade):
    _, zs = cascade
    dj.IMMDriftEstimator(IMM).update_observation(zs[0], 0.1)
    before = _cycle._cache_size()
    other = dj.seed_imm(dj.Observation(OBS.loadings * 1.1, OBS.cov, feature_names=NAMES))
    est = dj.IMMDriftEstimator(other).update_observation(zs[0], 0.1)
    assert _cycle._cache_size() == before and int(est.num_updates) == 1


def test_pure_step_under_jit_scan_and_vmap_equals_the_filter(cascade):
    _, zs = cascade
    res = dj.filter(IMM, zs, 0.1)
    step = dj.streaming_step(IMM)

    @jax.jit
    def run(z):
        return jax.lax.scan(lambda s, zk: step(s, zk, 0.1), IMM.initial_state(), z)[1]

    out = run(zs)
    assert np.max(np.abs(np.asarray(out.drift - res.drift))) < 1e-12
    assert np.max(np.abs(np.asarray(out.log_likelihood_step - res.log_likelihoods))) < 1e-12
    assert np.max(np.abs(np.asarray(out.p_crisis - res.p_crisis))) < 1e-12
    both = jax.vmap(run)(np.stack([zs, 0.5 * zs]))
    assert both.drift.shape == (2, 400)
    assert float(jnp.max(jnp.abs(both.drift[0] - res.drift))) < 1e-12
    # one compiled step for two models of the same shape
    _pure_step(IMM, IMM.initial_state(), zs[0], 0.1)
    size = _pure_step._cache_size()
    dj.streaming_step(dj.seed_imm(OBS)).__call__(IMM.initial_state(), zs[0], 0.1)
    assert _pure_step._cache_size() == size


def test_timestamps_and_warm_start(cascade):
    _, zs = cascade
    t = 1000.0 + 0.1 * np.arange(1, 401)
    res = dj.filter(IMM, zs, 0.1)
    est = dj.IMMDriftEstimator.from_result(IMM, dj.filter(IMM, zs[:300], 0.1), last_time=t[299])
    assert int(est.num_updates) == 300
    for k in range(300, 400):
        est = est.update_observation(zs[k], t=t[k])
    assert abs(float(est.drift_rate_per_sec()) - float(res.drift[-1])) < 1e-12
    assert abs(float(est.log_likelihood) - float(res.log_likelihood)) < 1e-9
    assert est.last_time == t[-1]
    with pytest.raises(ValueError, match=r"`t` must not be before the last update's time"):
        est.update_observation(zs[0], t=t[-2])
    with pytest.raises(ValueError, match=r"the first timestamped update \(t=5\.0\) needs `dt`"):
        dj.IMMDriftEstimator(IMM).update_observation(zs[0], t=5.0)
    with pytest.raises(ValueError, match=r"`dt` \(0\.5\) and `t` .* disagree"):
        est.update_observation(zs[0], 0.5, t=t[-1] + 0.1)
    same = est.update_observation(zs[0], t=t[-1])  # an equal timestamp: a dt = 0 update
    ref = est.update_observation(zs[0], 0.0)
    assert float(same.log_likelihood) == float(ref.log_likelihood)


def test_streaming_latency():
    est = dj.IMMDriftEstimator(IMM)
    z = np.array([1.0, 2.0, 3.0, 4.0])
    est = est.update_observation(z, 0.1)  # compiled here (or earlier in this process)
    import time

    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        est = est.update_observation(z, 0.1)
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    assert median < 2e-3, median  # measured 7e-5 s on the 2-core machine


# --- item 7: simulated paths as a timestamped table -----------------------------------------


def test_paths_to_frame_reads_back_as_a_history():
    obs = dj.default_observation().with_feature_names(NAMES)
    imm = dj.seed_imm(obs)
    paths = dj.simulate(imm, jax.random.key(5), 2, 200, 0.2, sampling="poisson")
    df = paths.to_frame(NAMES)
    assert list(df.columns) == ["path", "time", "dt", *NAMES, "mid", "returns"] + [
        "drift",
        "drift_rate",
        "regime",
    ]
    one = df[df.path == 1]
    h = dj.read_history(
        one[["time", *NAMES, "mid"]], price_column="mid", first_dt=float(paths.dt[1, 0])
    )
    assert np.allclose(h.dt, np.asarray(paths.dt[1]), rtol=0, atol=1e-12)
    assert np.allclose(h.returns[1:], np.asarray(paths.returns[1, 1:]), rtol=1e-9, atol=1e-9)
    ll_table = float(dj.filter(imm, one[list(NAMES)], h.dt).log_likelihood)
    ll_paths = float(dj.filter(imm, paths.features[1], paths.dt[1]).log_likelihood)
    assert abs(ll_table - ll_paths) < 1e-9
    assert set(one.regime) <= set(imm.regime_names)
