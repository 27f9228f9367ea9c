"""Offline calibration of the feature model: recovery within the OLS standard errors, a peer
(statsmodels OLS), Ledoit-Wolf against hand computations, file round trips, clear errors."""

import sys
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import drift_jax as dj
from drift_jax._simulation.synthetic import (
    DEFAULT_FEATURE_NAMES,
    default_feature_cov,
    default_loadings,
)

ALPHA, R = default_loadings(), default_feature_cov()


def _features(mu, rng, alpha=ALPHA, cov=R):
    eps = rng.standard_normal((mu.size, alpha.size)) @ np.linalg.cholesky(cov).T
    return mu[:, None] * alpha[None, :] + eps


@pytest.fixture(scope="module")
def big():
    """T = 200k rows of z = alpha mu + eps with the default loadings and full R."""
    rng = np.random.default_rng(42)
    mu = rng.normal(0.0, 10.0, 200_000)
    return mu, _features(mu, rng)


def test_recovers_loadings_and_covariance(big):
    mu, z = big
    cal = dj.calibrate_observation(z, mu, columns=DEFAULT_FEATURE_NAMES)
    T = mu.size
    # OLS through the origin: se(alpha_k) = sqrt(R_kk / sum mu^2): 1.1e-3 to 2.7e-3.
    se = np.sqrt(np.diag(R) / np.sum(mu**2))
    assert np.all(np.abs(cal.loadings - ALPHA) < 4.0 * se)  # measured: max |err| / se = 0.98
    np.testing.assert_allclose(cal.loading_se, se, rtol=0.01)  # the reported se agrees
    # Sample covariance of Gaussian noise: se(R_ij) = sqrt((R_ii R_jj + R_ij^2) / T).
    cov_se = np.sqrt((np.outer(np.diag(R), np.diag(R)) + R**2) / T)
    assert np.all(np.abs(cal.cov - R) < 4.0 * cov_se)  # measured: max |err| / se = 1.13
    assert cal.n_rows == T and cal.n_rows_per_feature.tolist() == [T] * 4
    assert cal.shrinkage == 0.0
    np.testing.assert_array_equal(cal.cov, cal.sample_cov)  # no shrinkage: the same array
    np.testing.assert_allclose(np.diag(cal.residual_corr), 1.0, rtol=1e-14)
    corr = R / np.outer(np.sqrt(np.diag(R)), np.sqrt(np.diag(R)))
    np.testing.assert_allclose(cal.residual_corr, corr, atol=0.01)
    # The observation holds the estimates (JAX default dtype: float64 in the tests).
    np.testing.assert_allclose(np.asarray(cal.observation.loadings), cal.loadings, rtol=1e-15)
    np.testing.assert_allclose(np.asarray(cal.observation.cov), cal.cov, rtol=1e-12)
    assert cal.observation.update == "joint" and cal.target_name == "target"
    table = cal.summary()
    assert list(table.index) == list(DEFAULT_FEATURE_NAMES)
    assert list(table.columns) == [
        "loading",
        "loading_se",
        "offset",
        "noise_std",
        "r_squared",
        "n_rows",
    ]
    np.testing.assert_allclose(table["noise_std"], np.sqrt(np.diag(cal.cov)))


def test_noisy_proxy_attenuates_as_documented(big):
    """y = mu + nu: loadings shrink by lambda = var mu / var y, and R gains the lost part."""
    mu, z = big
    nu = np.random.default_rng(7).normal(0.0, 5.0, mu.size)
    cal = dj.calibrate_observation(z, mu + nu)
    lam = 100.0 / 125.0
    # Measured: max |alpha_hat - lambda alpha| = 1.34 se.
    assert np.all(np.abs(cal.loadings - lam * ALPHA) < 4.0 * cal.loading_se)
    inflated = R + np.outer(ALPHA, ALPHA) * 100.0 * (1.0 - lam)
    cov_se = np.sqrt((np.outer(np.diag(inflated), np.diag(inflated)) + inflated**2) / mu.size)
    assert np.all(np.abs(cal.cov - inflated) < 4.0 * cov_se)  # measured: max 1.51 se


@pytest.mark.parametrize("intercept", [False, True])
def test_matches_statsmodels_ols_with_missing_data(intercept):
    rng = np.random.default_rng(3)
    T = 3000
    mu = rng.normal(1.0, 5.0, T)
    z = _features(mu, rng) + (np.array([0.5, -2.0, 0.0, 3.0]) if intercept else 0.0)
    z[rng.random((T, 4)) < 0.05] = np.nan  # 5% missing per feature
    y = mu.copy()
    y[rng.random(T) < 0.03] = np.nan
    cal = dj.calibrate_observation(z, y, intercept=intercept)
    for k in range(4):
        rows = ~np.isnan(z[:, k]) & ~np.isnan(y)
        X = sm.add_constant(y[rows]) if intercept else y[rows]
        ols = sm.OLS(z[rows, k], X).fit()
        slope = -1 if intercept else 0
        np.testing.assert_allclose(cal.loadings[k], ols.params[slope], rtol=1e-12)
        np.testing.assert_allclose(cal.loading_se[k], ols.bse[slope], rtol=1e-10)
        np.testing.assert_allclose(cal.r_squared[k], ols.rsquared, rtol=1e-10)
        assert cal.offsets[k] == (pytest.approx(ols.params[0], rel=1e-10) if intercept else 0.0)
        assert cal.n_rows_per_feature[k] == rows.sum()
    complete = ~np.isnan(y) & ~np.any(np.isnan(z), axis=1)
    E = z[complete] - cal.offsets - np.outer(y[complete], cal.loadings)
    np.testing.assert_allclose(cal.cov, E.T @ E / complete.sum(), rtol=1e-12)
    assert cal.n_rows == complete.sum() < T


def _lw_by_hand(X):
    """Ledoit & Wolf (2004) sec. 3.2, term by term in exact rational arithmetic."""
    n, p = len(X), len(X[0])
    S = [[sum(Fraction(x[i]) * x[j] for x in X) / n for j in range(p)] for i in range(p)]
    mu = sum(S[i][i] for i in range(p)) / p
    d2 = sum((S[i][j] - (mu if i == j else 0)) ** 2 for i in range(p) for j in range(p)) / p
    b2 = sum((Fraction(x[i]) * x[j] - S[i][j]) ** 2 for x in X for i in range(p) for j in range(p))
    rho = min(b2 / p / n**2, d2) / d2
    return [[rho * mu * (i == j) + (1 - rho) * S[i][j] for j in range(p)] for i in range(p)], rho


def test_ledoit_wolf_hand_examples():
    # S = diag(2, 0.5), mu = 1.25, delta^2 = 0.5625, b^2 = 8.5 / 16 = 0.53125 -> rho = 17/18.
    cov, rho = dj.ledoit_wolf(np.array([[2.0, 0.0], [0.0, 1.0], [-2.0, 0.0], [0.0, -1.0]]))
    assert rho == pytest.approx(17 / 18, rel=1e-15)
    np.testing.assert_allclose(cov, [[23.25 / 18, 0.0], [0.0, 21.75 / 18]], rtol=1e-15)
    # S = [[29/3, 9/2], [9/2, 5/2]], mu = 73/12, delta^2 = 4765/144, b^2 = 1235/432:
    # rho = 247/2859, a partial shrinkage with correlated columns.
    X = [[3, 1], [-3, -2], [2, 2], [-2, -1], [4, 2], [-4, -1]]
    exact, exact_rho = _lw_by_hand(X)
    assert exact_rho == Fraction(247, 2859)
    cov, rho = dj.ledoit_wolf(np.array(X, dtype=float))
    assert rho == pytest.approx(float(exact_rho), rel=1e-14)
    np.testing.assert_allclose(cov, np.array(exact, dtype=float), rtol=1e-14)
    # Already a multiple of the identity (or one feature): nothing to shrink.
    assert dj.ledoit_wolf(np.array([[1.0, 0.0], [0.0, 1.0]]))[1] == 0.0
    assert dj.ledoit_wolf(np.array([[1.0], [-3.0]]))[1] == 0.0


def test_ledoit_wolf_matches_statsmodels_naive_reference():
    """statsmodels keeps scikit-learn's naive Ledoit-Wolf (it returns rho * S)."""
    from statsmodels.robust.covariance import _naive_ledoit_wolf_shrinkage

    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 6)) @ np.linalg.cholesky(0.5 + 0.5 * np.eye(6)).T
    _, rho = dj.ledoit_wolf(x)
    S = x.T @ x / 40
    ref = _naive_ledoit_wolf_shrinkage(x, 0).cov
    np.testing.assert_allclose(rho * S, ref, rtol=1e-12)
    assert 0.0 < rho < 1.0


def test_shrinkage_settings(big):
    mu, z = big
    mu, z = mu[:5000], z[:5000]
    plain = dj.calibrate_observation(z, mu)
    S, m = plain.sample_cov, 4
    target = np.trace(S) / m * np.eye(m)
    lw = dj.calibrate_observation(z, mu, shrinkage="ledoit-wolf")
    assert 0.0 <= lw.shrinkage <= 1.0  # measured 0.0017 at T = 5000
    np.testing.assert_allclose(lw.cov, lw.shrinkage * target + (1 - lw.shrinkage) * S, rtol=1e-13)
    assert np.linalg.eigvalsh(lw.cov)[0] > 0
    # Bit for bit: the statistics are fsum formulas, specified to the bit (README,
    # "Reproducibility"); rho = 0 gives 0 * target + 1 * S = S exactly.
    np.testing.assert_array_equal(lw.sample_cov, S)
    half = dj.calibrate_observation(z, mu, shrinkage=0.5)
    assert half.shrinkage == 0.5
    np.testing.assert_allclose(half.cov, 0.5 * target + 0.5 * S, rtol=1e-14)
    np.testing.assert_allclose(dj.calibrate_observation(z, mu, shrinkage=1).cov, target)
    np.testing.assert_array_equal(dj.calibrate_observation(z, mu, shrinkage=0.0).cov, S)


def test_ledoit_wolf_makes_a_singular_covariance_usable():
    """More features than rows (and two collinear ones): only the shrunk R is SPD."""
    rng = np.random.default_rng(11)
    T, m = 15, 20
    mu = rng.normal(0.0, 3.0, T)
    z = _features(mu, rng, np.linspace(0.5, 1.5, m), np.eye(m))
    z[:, 1] = 2.0 * z[:, 0]
    with pytest.raises(ValueError, match=r"residual covariance .* is singular .* shrinkage"):
        dj.calibrate_observation(z, mu, min_rows=10)
    cal = dj.calibrate_observation(z, mu, min_rows=10, shrinkage="ledoit-wolf")
    assert 0.0 < cal.shrinkage <= 1.0
    assert np.linalg.eigvalsh(cal.cov)[0] > 0
    assert np.linalg.matrix_rank(cal.sample_cov) < m


def test_realised_drift_by_hand():
    t = [0.0, 1.0, 2.0, 3.0, 4.0]
    p = [100.0, 101.0, 102.0, np.nan, 100.0]
    y = dj.realised_drift(t, p, 2.0, per="horizon")
    # row 1: p(3) is missing, so p as of t = 3 is p(2) = 102: 1e4 (102 / 101 - 1) / 2.
    expected = [100.0, 1e4 * (102 / 101 - 1) / 2, 1e4 * (100 / 102 - 1) / 2, np.nan, np.nan]
    np.testing.assert_allclose(y, expected, rtol=1e-13)
    # The default divides by the time the return covers (issue 15): row 1's is 1 s.
    expected[1] = 1e4 * (102 / 101 - 1) / 1
    np.testing.assert_allclose(dj.realised_drift(t, p, 2.0), expected, rtol=1e-13)
    # Irregular stamps: from t = 0.5 no price is observed in (0.5, 1.5], so no proxy.
    y = dj.realised_drift([0.0, 0.5, 2.5, 3.0], [100.0, 110.0, 120.0, 130.0], 1.0, per="horizon")
    np.testing.assert_allclose(y, [1e4 * 0.1, np.nan, np.nan, np.nan])
    y = dj.realised_drift([0.0, 0.5, 2.5, 3.0], [100.0, 110.0, 120.0, 130.0], 1.0)
    np.testing.assert_allclose(y, [1e4 * 0.1 / 0.5, np.nan, np.nan, np.nan])
    # A 0.1 s grid built by multiplication: t + 0.3 must land on the stamp 3 rows later.
    t = 0.1 * np.arange(10)
    p = 100.0 + np.arange(10.0)
    y = dj.realised_drift(t, p, 0.3)
    np.testing.assert_allclose(y[:7], 1e4 * (p[3:] / p[:7] - 1) / 0.3, rtol=1e-12)
    assert np.all(np.isnan(y[7:]))


def _table(T=4000, seed=1):
    rng = np.random.default_rng(seed)
    dt = rng.uniform(0.05, 0.3, T)
    t = np.cumsum(dt)
    drift = 10.0 * np.sin(t / 20.0)
    price = 100.0 * np.exp(np.cumsum(drift * dt * 1e-4 + rng.normal(0, 2e-4, T)))
    z = _features(drift, rng)
    z[rng.random((T, 4)) < 0.02] = np.nan
    price[rng.random(T) < 0.01] = np.nan
    start = pd.Timestamp("2024-03-01 09:30:00")
    df = pd.DataFrame(z, columns=list(DEFAULT_FEATURE_NAMES))
    df.insert(0, "time", start + pd.to_timedelta(np.round(t * 1e6), unit="us"))
    df["price"] = price
    df["venue"] = "X"
    return df


def test_tables_and_files_give_the_arrays_results(tmp_path):
    df = _table()
    seconds = (df["time"] - df["time"].iloc[0]).dt.total_seconds().to_numpy()
    y = dj.realised_drift(seconds, df["price"].to_numpy(), 5.0)
    cols = list(DEFAULT_FEATURE_NAMES)
    ref = dj.calibrate_observation(df[cols].to_numpy(), y, columns=cols, shrinkage="ledoit-wolf")
    assert 0.9 < np.nanmean(ref.loadings / ALPHA) < 1.1 and ref.n_rows > 3000
    csv, parquet = tmp_path / "f.csv", tmp_path / "f.parquet"
    df.to_csv(csv, index=False)
    df.to_parquet(parquet, index=False)
    with_seconds = df.assign(time=seconds)
    kw = {"time_column": "time", "price_column": "price", "horizon": 5}
    # Bit for bit: every source reads back the same float64 values, and the statistics
    # are fsum formulas (specified to the bit, independent of memory layout and row order).
    for source in (df, csv, str(parquet), with_seconds):
        cal = dj.calibrate_observation(source, columns=cols, shrinkage="ledoit-wolf", **kw)
        np.testing.assert_array_equal(cal.loadings, ref.loadings)
        np.testing.assert_array_equal(cal.cov, ref.cov)
        assert cal.n_rows == ref.n_rows and cal.shrinkage == ref.shrinkage
        assert cal.feature_names == DEFAULT_FEATURE_NAMES
        assert cal.target_name == "realised_drift('price', horizon=5 s)"
    # A target column, and the default feature columns (all but time / target / price).
    df2 = df.drop(columns=["price", "venue"]).assign(proxy=y)
    df2.to_csv(csv, index=False)
    cal = dj.calibrate_observation(csv, target_column="proxy", time_column="time")
    np.testing.assert_array_equal(cal.loadings, ref.loadings)
    assert cal.feature_names == DEFAULT_FEATURE_NAMES and cal.target_name == "proxy"


def _bad_table():
    df = _table(T=300).drop(columns=["venue"])
    return df


ARRAY_CASES = {
    "inf_feature": (
        lambda z, y: (np.where(np.arange(300)[:, None] == 3, np.inf, z), y),
        {},
        r"`features` must be finite or NaN \(NaN marks missing data; inf is an error\); "
        r"got inf at row 3, column 0 \('feature0'\)",
    ),
    "inf_target": (
        lambda z, y: (z, np.where(np.arange(300) == 8, -np.inf, y)),
        {},
        r"`target` must be finite or NaN .* got -inf at row 8",
    ),
    "lengths": (lambda z, y: (z, y[:-1]), {}, r"`target` must have shape \[T\] = \[300\]"),
    "no_target": (lambda z, y: (z, None), {}, r"`target` \(the drift proxy, \[T\]\) is needed"),
    "constant": (
        lambda z, y: (np.where(np.arange(4) == 2, 3.0, z), y),
        {},
        r"feature 'feature2' is constant \(= 3.0 on all 300 rows",
    ),
    "constant_target": (lambda z, y: (z, np.zeros(300)), {}, r"the target 'target' is constant"),
    "few_rows_feature": (
        lambda z, y: (np.where(np.arange(300)[:, None] < 250, np.nan, z), y),
        {},
        r"feature 'feature0' has only 50 of 300 rows observed together with the target "
        r"\(after dropping NaN\); at least min_rows=100",
    ),
    "few_complete_rows": (
        lambda z, y: (np.where((np.arange(300) % 4)[:, None] == np.arange(4), np.nan, z), y),
        {"min_rows": 100},
        r"only 0 of 300 rows have the target and every feature observed \(after dropping "
        r"NaN\); at least min_rows=100",
    ),
    "columns_count": (lambda z, y: (z, y), {"columns": ["a"]}, r"`columns` must name the 4"),
    "table_arg": (lambda z, y: (z, y), {"time_column": "t"}, r"`time_column` is for a table"),
    "shape": (lambda z, y: (z[None], y), {}, r"`features` must have shape \[T, m\]"),
    "shrinkage": (lambda z, y: (z, y), {"shrinkage": 1.5}, r"`shrinkage` must be None, "),
    "shrinkage_name": (lambda z, y: (z, y), {"shrinkage": "oas"}, r"got shrinkage='oas'"),
    "min_rows": (lambda z, y: (z, y), {"min_rows": 1}, r"`min_rows` must be an int >= 2"),
    "update": (lambda z, y: (z, y), {"update": "both"}, r"`update` must be one of"),
}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_bad_arrays(case):
    rng = np.random.default_rng(0)
    mu = rng.normal(0.0, 5.0, 300)
    make, kwargs, match = ARRAY_CASES[case]
    z, y = make(_features(mu, rng), mu)
    with pytest.raises(ValueError, match=match):
        dj.calibrate_observation(z, y, **kwargs)


def _swap_rows(df, i, j):
    t = df["time"].to_numpy().copy()
    t[[i, j]] = t[[j, i]]
    return df.assign(time=t)


TABLE_CASES = {
    "missing_columns": (
        lambda df: df,
        {
            "columns": ["bim", "nope"],
            "target_column": "proxy",
            "price_column": None,
            "horizon": None,
        },
        r"column\(s\) \['nope', 'proxy'\] not in the table; available columns: "
        r"\['time', 'bim', 'dbim', 'bpg', 'sweep', 'price'\]",
    ),
    "non_increasing": (
        lambda df: _swap_rows(df, 5, 6),
        {},
        r"timestamps in column 'time' must be strictly increasing; row 6 \(.*\) is not after "
        r"row 5",
    ),
    "repeated_stamp": (
        lambda df: df.assign(time=df["time"].where(df.index != 9, df["time"].iloc[8])),
        {},
        r"row 9 .* is not after row 8",
    ),
    "missing_stamp": (
        lambda df: df.assign(time=df["time"].where(df.index != 4)),
        {},
        r"time column 'time' has a missing timestamp at row 4",
    ),
    "bad_stamp_text": (
        lambda df: df.assign(time=["noon"] * len(df)),
        {},
        r"time column 'time' must hold timestamps",
    ),
    "inf_column": (
        lambda df: df.assign(dbim=df["dbim"].where(df.index != 7, np.inf)),
        {},
        r"feature column 'dbim' must be finite or NaN .* got inf at row 7",
    ),
    "constant_column": (
        lambda df: df.assign(bpg=1.5),
        {},
        r"feature 'bpg' is constant \(= 1.5",
    ),
    "text_column": (
        lambda df: df.assign(venue="X"),
        {},
        r"feature column 'venue' must be numeric, got dtype .* \(row 0: 'X'\); choose",
    ),
    "price_nonpositive": (
        lambda df: df.assign(price=df["price"].where(df.index != 2, 0.0)),
        {},
        r"`prices` must be > 0 \(or NaN, missing\); got 0.0 at row 2",
    ),
    "no_time": (lambda df: df, {"time_column": None}, r"`price_column` \('price'\) needs"),
    "no_horizon": (lambda df: df, {"horizon": None}, r"`horizon` must be a number of seconds"),
    "two_targets": (
        lambda df: df.assign(proxy=1.0),
        {"target_column": "proxy"},
        r"give one drift proxy",
    ),
    "horizon_alone": (
        lambda df: df,
        {"price_column": None},
        r"`horizon` \(5\.0\) is only used with `price_column`",
    ),
    "no_proxy": (
        lambda df: df,
        {"price_column": None, "horizon": None},
        r"no drift proxy: pass `target`",
    ),
    "few_rows": (lambda df: df, {"min_rows": 500}, r"at least min_rows=500"),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_tables(case):
    change, kwargs, match = TABLE_CASES[case]
    args = {"time_column": "time", "price_column": "price", "horizon": 5.0} | kwargs
    with pytest.raises(ValueError, match=match):
        dj.calibrate_observation(change(_bad_table()), **args)


def test_bad_files(tmp_path, monkeypatch):
    df = _bad_table()
    with pytest.raises(FileNotFoundError, match=r"`features` file '.*nope\.csv' does not exist"):
        dj.calibrate_observation(tmp_path / "nope.csv", target_column="bim")
    with pytest.raises(ValueError, match=r"must be a CSV \(\.csv.*\) or Parquet \(\.parquet"):
        dj.calibrate_observation(tmp_path / "data.xlsx", target_column="bim")
    broken = tmp_path / "broken.csv"
    broken.write_text('a,b\n1,2\n"3,4\n')
    with pytest.raises(ValueError, match=r"could not read the CSV file '.*broken\.csv'"):
        dj.calibrate_observation(broken, target_column="a")
    parquet = tmp_path / "f.parquet"
    df.to_parquet(parquet)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(ImportError, match=r"needs pyarrow: pip install drift_jax\[parquet\]"):
        dj.calibrate_observation(parquet, time_column="time", price_column="price", horizon=5)


def test_bad_ledoit_wolf_and_realised_drift_input():
    with pytest.raises(ValueError, match=r"`residuals` must have shape \[n, m\]"):
        dj.ledoit_wolf([1.0, 2.0, 3.0])
    with pytest.raises(
        ValueError, match=r"`residuals` must be finite; got nan at row 1, column 0"
    ):
        dj.ledoit_wolf(np.array([[1.0, 2.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"`times` and `prices` must be vectors of one length"):
        dj.realised_drift([0.0, 1.0], [1.0], 1.0)
    with pytest.raises(ValueError, match=r"row 2 \(1\.0\) is not after row 1 \(2\.0\)"):
        dj.realised_drift([0.0, 2.0, 1.0], [1.0, 1.0, 1.0], 1.0)
    with pytest.raises(ValueError, match=r"`horizon` must be a number of seconds > 0, got"):
        dj.realised_drift([0.0, 1.0], [1.0, 1.0], 0.0)
