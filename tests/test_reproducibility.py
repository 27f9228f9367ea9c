"""Numbers a model, a config or a calibration stores are specified to the bit (README,
"Reproducibility"): each is checked bit for bit against an independent reference written
here in exact (``fractions``) or plain-Python arithmetic, which is legitimate only because
these numbers do not depend on BLAS / LAPACK / XLA. Filter outputs are not in this file."""

import itertools
import math
import re
from fractions import Fraction

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings

import drift_jax as dj
from drift_jax._io.config import tomllib
from drift_jax._models.presets import SEED_TRANSITION
from drift_jax._simulation.synthetic import default_feature_cov, default_loadings

F32, F64 = np.float32, np.float64


# --- independent references -----------------------------------------------------------------


def _det(A) -> Fraction:
    """Determinant by the Leibniz formula (a sum over permutations), in exact arithmetic."""
    n = len(A)
    total = Fraction(0)
    for perm in itertools.permutations(range(n)):
        inversions = sum(perm[i] > perm[j] for i in range(n) for j in range(i + 1, n))
        term = Fraction(-1 if inversions % 2 else 1)
        for i, j in enumerate(perm):
            term *= A[i][j]
            if not term:
                break
        total += term
    return total


def _reference_stationary(P) -> list[Fraction] | None:
    """The stationary distribution of ``P`` with each row divided by its exact sum, from the
    Markov chain tree theorem: ``p_i`` is proportional to the principal minor of ``I - P``
    without row and column ``i`` (they are all 0 iff the chain has > 1 closed class)."""
    rows = [[Fraction(x) for x in r] for r in np.asarray(P, F64).tolist()]
    rows = [[x / sum(r) for x in r] for r in rows]
    M = len(rows)
    L = [[(i == j) - rows[i][j] for j in range(M)] for i in range(M)]
    minors = []
    for k in range(M):
        keep = [i for i in range(M) if i != k]
        minors.append(_det([[L[i][j] for j in keep] for i in keep]) if keep else Fraction(1))
    total = sum(minors)
    return None if total == 0 else [x / total for x in minors]


def _fsum(terms) -> float:
    return math.fsum(terms) + 0.0  # a zero sum as +0.0 (the library's rule)


def _reference_cholesky(A) -> np.ndarray:
    """Column by column (Cholesky-Crout), each entry one fsum, one sqrt or one division."""
    a = np.asarray(A, F64).tolist()
    m = len(a)
    L = [[0.0] * m for _ in range(m)]
    for j in range(m):
        L[j][j] = math.sqrt(_fsum([a[j][j]] + [-(L[j][k] * L[j][k]) for k in range(j)]))
        for i in range(j + 1, m):
            L[i][j] = _fsum([a[i][j]] + [-(L[i][k] * L[j][k]) for k in range(j)]) / L[j][j]
    return np.array(L, F64).reshape(m, m)


def _exact_gram(L) -> np.ndarray:
    """``L L^T`` with every entry the correctly rounded value of the exact sum."""
    F = [[Fraction(x) for x in r] for r in np.asarray(L, F64).tolist()]
    rows = [[float(sum(a * b for a, b in zip(r, s, strict=True))) for s in F] for r in F]
    return np.array(rows, F64).reshape(len(F), len(F))


def _bits(x) -> bytes:
    return np.ascontiguousarray(np.asarray(x)).tobytes()


# --- the stationary distribution ------------------------------------------------------------

NAMED = {
    "seed": SEED_TRANSITION,
    "one_regime": [[1.0]],
    "two": [[0.9, 0.1], [0.5, 0.5]],
    "absorbing": [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]],
    "transient_start": [[0.0, 0.7, 0.3], [0.0, 0.9, 0.1], [0.0, 0.2, 0.8]],
    "structural_zeros": [[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.3, 0.0, 0.7]],
    "periodic": [[0.0, 1.0], [1.0, 0.0]],
    "near_reducible": [[1 - 1e-12, 1e-12], [2e-12, 1 - 2e-12]],
    "near_reducible_3": [
        [1 - 1e-12, 1e-12, 0.0],
        [0.0, 1 - 1e-12, 1e-12],
        [3e-12, 0.0, 1 - 3e-12],
    ],
    "tiny_entry": [[1 - 1e-300, 1e-300], [0.5, 0.5]],
    "rows_off_by_rounding": [[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.6, 0.1, 0.3]],
}


@pytest.mark.parametrize("name", list(NAMED))
def test_stationary_is_the_exact_solution_correctly_rounded(name):
    P = NAMED[name]
    p = dj.stationary_distribution(P)
    exact = _reference_stationary(P)
    assert p.dtype == F64 and p.shape == (len(P),)
    assert p.tolist() == [float(x) for x in exact]  # bit for bit: specified exact
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=0, atol=len(P) * 2.3e-16)
    np.testing.assert_allclose(p @ np.asarray(P, F64), p, rtol=0, atol=2e-15)


def test_stationary_known_values():
    assert dj.stationary_distribution(NAMED["absorbing"]).tolist() == [0.0, 0.0, 1.0]
    assert dj.stationary_distribution(NAMED["transient_start"])[0] == 0.0
    assert dj.stationary_distribution([[1.0]]).tolist() == [1.0]
    assert dj.stationary_distribution(NAMED["periodic"]).tolist() == [0.5, 0.5]
    # Off-diagonals 1e-12 and 2e-12: 2/3, 1/3 to the last bit (lstsq lost ~4 digits here).
    np.testing.assert_allclose(
        dj.stationary_distribution(NAMED["near_reducible"]), [2 / 3, 1 / 3], rtol=1e-15
    )
    # The seed's: close to (10, 8, 5) / 23, the solution for the decimal entries.
    np.testing.assert_allclose(
        dj.stationary_distribution(SEED_TRANSITION), np.array([10, 8, 5]) / 23, rtol=1e-15
    )


def _stochastic(draw_rows, M):
    P = np.array(draw_rows, F64).reshape(M, M)
    sums = P.sum(axis=1, keepdims=True)
    P = np.where(sums > 0, P / np.where(sums > 0, sums, 1.0), np.eye(M))
    return P


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda M: st.tuples(
            st.just(M),
            st.lists(
                st.one_of(st.just(0.0), st.just(1e-12), st.floats(0.0, 1.0)),
                min_size=M * M,
                max_size=M * M,
            ),
        )
    )
)
def test_stationary_matches_the_tree_theorem_on_random_chains(case):
    M, entries = case
    P = _stochastic(entries, M)
    assume(np.all(np.abs(P.sum(axis=1) - 1) <= 1e-12))
    exact = _reference_stationary(P)
    if exact is None:  # > 1 closed class: not unique
        with pytest.raises(ValueError, match=r"`transition` has \d closed classes"):
            dj.stationary_distribution(P)
        return
    p = dj.stationary_distribution(P)
    assert p.tolist() == [float(x) for x in exact]
    # The same from a JAX array or nested lists.
    assert dj.stationary_distribution(jnp.asarray(P)).tolist() == p.tolist()
    assert dj.stationary_distribution(P.tolist()).tolist() == p.tolist()


@pytest.mark.parametrize(
    ("P", "classes"),
    [
        (np.eye(2), r"\{0\} and \{1\}"),
        ([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], r"\{1\} and \{2\}"),
        (
            [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.2, 0.8], [0, 0, 0.8, 0.2]],
            r"\{0, 1\} and \{2, 3\}",
        ),
    ],
    ids=["identity", "two_absorbing", "two_blocks"],
)
def test_reducible_chain_raises_a_clear_error(P, classes):
    with pytest.raises(ValueError, match=r"`transition` has 2 closed classes") as info:
        dj.stationary_distribution(P)
    msg = str(info.value)
    assert "not unique" in msg and "pass `init_probs`" in msg and "transition=[[" in msg
    assert re.search(classes, msg)
    with pytest.raises(ValueError, match="closed classes"):
        dj.stationary_distribution(np.asarray(P, F32))


@pytest.mark.parametrize(
    ("P", "match"),
    [
        ([[0.5, 0.5]], r"`transition` must be a square matrix \[M, M\], got shape \(1, 2\)"),
        ([0.5, 0.5], r"must be a square matrix"),
        (np.zeros((0, 0)), r"must be a square matrix"),
        ([[0.5, 0.6], [0.5, 0.5]], r"`transition` must be row-stochastic.*row sums \[1\.1"),
        ([[1.5, -0.5], [0.5, 0.5]], r"`transition` must be row-stochastic"),
        ([[np.nan, 1.0], [0.5, 0.5]], r"`transition` must be row-stochastic: finite"),
        ([[np.inf, 1.0], [0.5, 0.5]], r"`transition` must be row-stochastic"),
        ("Pi", r"`transition` must be a matrix of numbers"),
        (None, r"`transition` must be a matrix of numbers"),
        ([["a", "b"], ["c", "d"]], r"`transition` must be a matrix of numbers"),
    ],
)
def test_bad_transition_names_the_argument(P, match):
    with pytest.raises(ValueError, match=match):
        dj.stationary_distribution(P)


def test_row_sum_tolerance_is_the_models():
    off = [[0.5, 0.5 + 5e-10], [0.5, 0.5]]  # within 1e-9: accepted (float64)
    assert dj.stationary_distribution(off).tolist() == [
        float(x) for x in _reference_stationary(off)
    ]
    with pytest.raises(ValueError, match="within 1e-09"):
        dj.stationary_distribution([[0.5, 0.5 + 5e-9], [0.5, 0.5]])
    loose = np.array([[0.5, 0.500004], [0.5, 0.5]], F32)  # float32: within 1e-5
    assert np.all(np.isfinite(dj.stationary_distribution(loose)))


def test_seed_imm_default_init_probs_are_the_exact_values():
    exact = [float(x) for x in _reference_stationary(SEED_TRANSITION)]
    assert exact == [0.43478260869565216, 0.34782608695652173, 0.2173913043478261]
    for extended in (False, True):
        imm = dj.seed_imm(extended=extended, dtype=F64)
        assert np.asarray(imm.init_probs).tolist() == exact
    # float32: the float64 values rounded once more, to float32.
    imm32 = dj.seed_imm(dtype=F32)
    assert _bits(imm32.init_probs) == _bits(np.array(exact, F64).astype(F32))
    # An explicit init_probs is kept as given.
    assert np.asarray(dj.seed_imm(init_probs=[0.5, 0.3, 0.2]).init_probs).tolist() == [
        0.5,
        0.3,
        0.2,
    ]


# --- Cholesky factors and covariances ------------------------------------------------------


@st.composite
def spd_matrices(draw, max_m=5):
    m = draw(st.integers(1, max_m))
    A = draw(hnp.arrays(F64, (m, m), elements=st.floats(-3.0, 3.0)))
    scale = draw(st.floats(1e-3, 1e3))
    R = (A @ A.T + 0.5 * np.eye(m)) * scale
    return 0.5 * (R + R.T)


@settings(max_examples=50, deadline=None)
@given(spd_matrices())
def test_cholesky_of_a_concrete_cov_is_the_plain_python_reference(R):
    m = R.shape[0]
    obs = dj.Observation(np.ones(m), R)
    L = np.asarray(obs.cov_chol)
    assert L.dtype == F64
    assert _bits(L) == _bits(_reference_cholesky(R))  # bit for bit: specified exact
    assert np.array_equal(L, np.tril(L)) and np.all(np.diag(L) > 0)
    # It reconstructs R (backward stable), and agrees with LAPACK to rounding.
    scale = np.max(np.abs(R))
    np.testing.assert_allclose(_exact_gram(L), R, rtol=0, atol=8 * m * 2.3e-16 * scale)
    np.testing.assert_allclose(L, np.linalg.cholesky(R), rtol=1e-9, atol=1e-12 * np.sqrt(scale))
    # cov of a concrete factor: L L^T computed exactly, rounded once; exactly symmetric.
    cov = np.asarray(obs.cov)
    assert _bits(cov) == _bits(_exact_gram(L))
    # float32: the float64 factor of the float32 values, rounded to float32.
    R32 = R.astype(F32)
    obs32 = dj.Observation(np.ones(m, F32), R32)
    want = _reference_cholesky(0.5 * (R32.astype(F64) + R32.astype(F64).T)).astype(F32)
    assert _bits(obs32.cov_chol) == _bits(want)
    assert _bits(obs32.cov) == _bits(_exact_gram(want).astype(F32))


def test_known_cholesky_values():
    obs = dj.Observation([1.0, 0.8], [[4.0, 2.8], [2.8, 4.0]])
    assert np.asarray(obs.cov_chol).tolist() == [[2.0, 0.0], [1.4, math.sqrt(4.0 - 1.4 * 1.4)]]
    assert np.asarray(obs.cov).tolist() == [[4.0, 2.8], [2.8, 3.9999999999999996]]
    obs = dj.Observation(default_loadings(), default_feature_cov())
    assert _bits(obs.cov_chol) == _bits(_reference_cholesky(default_feature_cov()))


def test_not_positive_definite_names_the_argument():
    with pytest.raises(ValueError, match=r"`cov` must be positive definite.*eigenvalues"):
        dj.Observation([1.0, 1.0], [[1.0, 1.0], [1.0, 1.0]])  # singular: pivot exactly 0
    with pytest.raises(ValueError, match=r"`init_cov` must be positive definite"):
        dj.KalmanModel(dj.OUAccel(0.1, 1.0, 0.1, 1.0), dj.Observation.scalar(1.0), 0.0, -1.0)


@settings(max_examples=40, deadline=None)
@given(spd_matrices(), st.sampled_from([F64, F32]))
def test_from_cholesky_keeps_the_factor_bit_for_bit(R, dtype):
    m = R.shape[0]
    L = np.linalg.cholesky(R).astype(dtype)  # any lower factor with a positive diagonal
    obs = dj.Observation.from_cholesky(np.ones(m, dtype), L)
    assert np.asarray(obs.cov_chol).dtype == dtype
    assert _bits(obs.cov_chol) == _bits(L)
    assert _bits(obs.cov) == _bits(_exact_gram(L).astype(dtype))
    # Above the diagonal is ignored; a negative diagonal flips its column (the same R).
    upper = np.where(np.triu(np.ones((m, m), bool), 1), dtype(1.0), L)
    assert _bits(dj.Observation.from_cholesky(np.ones(m, dtype), upper).cov_chol) == _bits(L)
    flipped = L * np.where(np.arange(m) % 2 == 0, -1, 1).astype(dtype)
    back = dj.Observation.from_cholesky(np.ones(m, dtype), flipped)
    assert _bits(back.cov_chol) == _bits(L)
    # Through a config file: the same factor.
    model = dj.KalmanModel(dj.OU(dtype(0.1), dtype(1.0)), obs, dtype(0.0), dtype(1.0))
    again = dj.config_from_toml(dj.config_to_toml(model)).model
    assert _bits(again.observation.cov_chol) == _bits(L)


def test_from_cholesky_bad_factor_names_the_argument():
    with pytest.raises(ValueError, match=r"`cov_chol` must be a finite lower-triangular"):
        dj.Observation.from_cholesky([1.0, 1.0], [[1.0, 0.0], [0.5, 0.0]])
    with pytest.raises(ValueError, match=r"`cov_chol` must be a finite"):
        dj.Observation.from_cholesky([1.0], [[np.nan]])
    with pytest.raises(ValueError, match=r"`cov_chol` must have shape \[m, m\] = \[2, 2\]"):
        dj.Observation.from_cholesky([1.0, 1.0], [[1.0]])


def test_traced_values_keep_the_jax_path():
    """Inside jit the factor is jnp.linalg.cholesky's: equal to rounding, not bitwise."""
    R = default_feature_cov()
    alpha = default_loadings()
    eager = dj.Observation(alpha, R)
    traced = jax.jit(lambda r: dj.Observation(alpha, r).cov_chol)(R)
    np.testing.assert_allclose(traced, eager.cov_chol, rtol=1e-13, atol=1e-14)
    L = np.asarray(eager.cov_chol)
    kept = jax.jit(lambda c: dj.Observation.from_cholesky(alpha, c).cov_chol)(L)
    assert _bits(kept) == _bits(L)  # tril and a sign select: exact even when traced
    cov = jax.jit(lambda c: dj.Observation.from_cholesky(alpha, c).cov)(L)
    np.testing.assert_allclose(cov, eager.cov, rtol=1e-14, atol=1e-14)


# --- no LAPACK / BLAS in the numbers that are stored ---------------------------------------


def test_stored_numbers_do_not_call_lapack(monkeypatch, tmp_path):
    """With NumPy's and JAX's solvers and factorisations replaced by errors, models, configs
    and calibrations are still built: none of their numbers comes from LAPACK."""

    def boom(*args, **kwargs):
        raise AssertionError("LAPACK was called for a stored number")

    for name in ("lstsq", "solve", "cholesky", "inv", "qr", "pinv"):
        monkeypatch.setattr(np.linalg, name, boom)
        monkeypatch.setattr(jnp.linalg, name, boom)
    obs = dj.Observation(default_loadings(), default_feature_cov())
    imm = dj.seed_imm(obs, extended=True)
    text = dj.config_to_toml(imm, dj.RiskModel(10.0, 2.0))
    back = dj.config_from_toml(text).model
    assert dj.config_to_toml(back, dj.RiskModel(10.0, 2.0)) == text
    rng = np.random.default_rng(0)
    mu = rng.normal(0.0, 10.0, 500)
    z = np.outer(mu, [1.0, 0.5]) + rng.normal(0.0, 2.0, (500, 2))
    cal = dj.calibrate_observation(z, mu, shrinkage="ledoit-wolf", intercept=True)
    assert cal.observation.num_features == 2
    assert dj.stationary_distribution(SEED_TRANSITION).shape == (3,)


# --- calibration statistics ----------------------------------------------------------------


def _calibration_data(seed, T=400, m=3):
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 10.0, T)
    z = np.outer(mu, np.linspace(1.2, 0.4, m)) + rng.normal(0.0, 2.0, (T, m)) + 0.3
    z[rng.random((T, m)) < 0.05] = np.nan  # missing features
    mu[rng.random(T) < 0.03] = np.nan  # missing targets
    return z, mu


FIELDS = ("loadings", "cov", "sample_cov", "residual_corr", "loading_se", "r_squared")
FIELDS += ("offsets",)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    perm_seed=st.integers(0, 2**16),
    intercept=st.booleans(),
    shrinkage=st.sampled_from([None, "ledoit-wolf", 0.25]),
)
def test_calibration_does_not_depend_on_the_row_order(seed, perm_seed, intercept, shrinkage):
    """fsum is correctly rounded, so permuting the rows gives the same bits."""
    z, mu = _calibration_data(seed)
    perm = np.random.default_rng(perm_seed).permutation(mu.size)
    kw = dict(intercept=intercept, shrinkage=shrinkage, min_rows=50)
    a = dj.calibrate_observation(z, mu, **kw)
    b = dj.calibrate_observation(z[perm], mu[perm], **kw)
    for name in FIELDS:
        assert _bits(getattr(a, name)) == _bits(getattr(b, name)), name
    assert a.shrinkage == b.shrinkage and a.n_rows == b.n_rows
    assert _bits(a.observation.cov_chol) == _bits(b.observation.cov_chol)
    # The statistics are the fsum formulas (spelled out here for the complete rows).
    rows = ~np.isnan(mu) & ~np.any(np.isnan(z), axis=1)
    E = z[rows] - a.offsets[None, :] - mu[rows][:, None] * a.loadings[None, :]
    n = int(rows.sum())
    sample = [[_fsum((E[:, i] * E[:, j]).tolist()) / n for j in range(3)] for i in range(3)]
    assert a.sample_cov.tolist() == sample


def test_calibration_loadings_are_the_fsum_formula():
    z, mu = _calibration_data(1)
    cal = dj.calibrate_observation(z, mu, min_rows=50)
    for k in range(z.shape[1]):
        rows = ~np.isnan(mu) & ~np.isnan(z[:, k])
        zk, yk = z[rows, k], mu[rows]
        want = _fsum((zk * yk).tolist()) / _fsum((yk * yk).tolist())
        assert cal.loadings[k] == want
    cal = dj.calibrate_observation(z, mu, intercept=True, min_rows=50)
    rows = ~np.isnan(mu) & ~np.isnan(z[:, 0])
    zk, yk = z[rows, 0], mu[rows]
    y_bar, z_bar = _fsum(yk.tolist()) / yk.size, _fsum(zk.tolist()) / zk.size
    yc, zc = yk - y_bar, zk - z_bar
    a = _fsum((zc * yc).tolist()) / _fsum((yc * yc).tolist())
    assert cal.loadings[0] == a and cal.offsets[0] == z_bar - a * y_bar


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 60), m=st.integers(1, 5))
def test_ledoit_wolf_does_not_depend_on_the_row_order(seed, n, m):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m)) * rng.uniform(0.1, 10.0, m)
    cov, rho = dj.ledoit_wolf(x)
    cov2, rho2 = dj.ledoit_wolf(x[rng.permutation(n)])
    assert _bits(cov) == _bits(cov2) and rho == rho2
    assert np.array_equal(cov, cov.T)


def test_a_calibration_written_to_a_config_reloads_bit_for_bit():
    z, mu = _calibration_data(2)
    cal = dj.calibrate_observation(z, mu, shrinkage="ledoit-wolf", min_rows=50)
    model = dj.KalmanModel(dj.OU(0.02, 1.0), cal.observation)
    text = dj.config_to_toml(model, feature_names=cal.feature_names)
    back = dj.config_from_toml(text)
    assert _bits(back.model.observation.cov_chol) == _bits(cal.observation.cov_chol)
    assert _bits(back.model.observation.loadings) == _bits(cal.loadings)
    # The file's cov is the exact L L^T of the factor, rounded once.
    doc = tomllib.loads(text)
    assert doc["observation"]["cov"] == _exact_gram(cal.observation.cov_chol).tolist()
    np.testing.assert_allclose(doc["observation"]["cov"], cal.cov, rtol=1e-14)
