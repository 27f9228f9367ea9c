"""TOML config files: save -> load round-trips bit-exactly; hand-written files load; bad
files raise errors that name the file and the key path."""

import datetime
import re
from fractions import Fraction
from pathlib import Path

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import drift_jax as dj
from drift_jax._io.config import tomllib  # the stdlib module, or tomli before 3.11
from drift_jax._simulation.synthetic import (
    DEFAULT_FEATURE_NAMES,
    default_feature_cov,
    default_loadings,
)

F32, F64 = np.float32, np.float64


def _obs(dtype=F64, update="joint"):
    return dj.Observation(
        default_loadings().astype(dtype), default_feature_cov().astype(dtype), update
    )


def _kalman_ou(dtype=F64):
    d = dj.OU(dtype(0.1), dtype(0.3), "exact")
    return dj.KalmanModel(d, _obs(dtype), dtype(-1.5), dtype(2.5))


def _kalman_accel(dtype=F64):
    d = dj.OUAccel(dtype(0.02), dtype(1.1), dtype(0.7), dtype(0.45), "exact")
    cov = np.array([[2.0, 0.3], [0.3, 0.5]], dtype)
    return dj.KalmanModel(d, _obs(dtype), np.array([0.25, -0.125], dtype), cov)


def _mixed_imm(dtype=F64):
    members = (
        dj.OU(dtype(0.1), dtype(0.3)),
        dj.OUAccel(dtype(0.02), dtype(1.0), dtype(0.5), dtype(0.25), "exact"),
        dj.OU(dtype(0.0), dtype(5.0), "exact"),
    )
    Pi = np.array([[0.9, 0.07, 0.03], [0.1, 0.85, 0.05], [0.2, 0.2, 0.6]], dtype)
    return dj.IMMModel(
        members,
        _obs(dtype, "independent"),
        Pi,
        np.array([0.5, 0.3, 0.2], dtype),
        np.array([1.0, 0.0], dtype),
        np.array([3.0, 0.1], dtype),
        regime_names=("calm", "trend", "crash"),
        crisis_regime=1,
    )


MODELS = {
    "kalman_ou_exact": _kalman_ou,
    "kalman_ouaccel_exact": _kalman_accel,
    "seed_imm_4_features": lambda dt: dj.seed_imm(_obs(dt), dtype=dt),
    "seed_imm_extended": lambda dt: dj.seed_imm(_obs(dt), extended=True, dtype=dt),
    "mixed_imm": _mixed_imm,
}


def _named(model, names):
    """``model`` with its observation's ``feature_names`` set (a static field)."""
    obs = model.observation.with_feature_names(names)
    return eqx.tree_at(lambda m: m.observation, model, obs)


def assert_same_model(a, b):
    """Same tree structure and static fields; every leaf bitwise equal with the same dtype."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), (x, y)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_bit_exact(name, dtype, tmp_path):
    model = MODELS[name](dtype)
    assert model.dtype == dtype
    risk = dj.RiskModel(dtype(12.3), dtype(1.7), threshold=0.35)
    meta = {"fitted_by": "test", "created": datetime.datetime(2025, 1, 2, 3, 4, 5)}
    path = dj.save_config(
        tmp_path / "m.toml", model, risk, feature_names=DEFAULT_FEATURE_NAMES, metadata=meta
    )
    cfg = dj.load_config(path)
    assert type(cfg.model) is type(model)
    # the config's feature names become the loaded model's (issue 15): the same model, named
    assert cfg.model.observation.feature_names == DEFAULT_FEATURE_NAMES
    assert_same_model(cfg.model, _named(model, DEFAULT_FEATURE_NAMES))
    assert_same_model(cfg.risk, risk)
    assert cfg.risk.threshold == 0.35
    assert cfg.feature_names == DEFAULT_FEATURE_NAMES
    assert cfg.metadata == meta
    # Static fields, spelled out (they are also part of the tree structure above).
    assert cfg.model.observation.update == model.observation.update
    if isinstance(model, dj.IMMModel):
        assert cfg.model.regime_names == model.regime_names
        assert cfg.model.crisis_index == model.crisis_index
        assert [d.discretisation for d in cfg.model.dynamics] == [
            d.discretisation for d in model.dynamics
        ]
    # Text -> model -> text is a fixed point, and the file is that text.
    text = path.read_text()
    again = dj.config_to_toml(
        cfg.model, cfg.risk, feature_names=cfg.feature_names, metadata=cfg.metadata
    )
    assert again == text


def test_float32_values_are_written_as_their_exact_doubles():
    text = dj.config_to_toml(_kalman_ou(F32))
    # float32(0.1) is 0.100000001490116119384765625; repr of that double round-trips.
    assert "theta = 0.10000000149011612" in text
    assert 'dtype = "float32"' in text
    assert float(np.float32(float("0.10000000149011612"))) == float(np.float32(0.1))


def test_written_cov_is_the_cholesky_product_in_float64():
    for dtype in (F64, F32):
        model = _kalman_ou(dtype)
        doc = tomllib.loads(dj.config_to_toml(model))
        L = np.asarray(doc["observation"]["cov_cholesky"])
        np.testing.assert_array_equal(L, np.asarray(model.observation.cov_chol, F64))
        cov = np.asarray(doc["observation"]["cov"])
        # Bit for bit: the written cov is specified as L L^T computed exactly and rounded
        # once to float64 (no BLAS product), so an exact reference must match every bit.
        F = [[Fraction(x) for x in row] for row in L.tolist()]
        exact = [[float(sum(a * b for a, b in zip(r, q, strict=True))) for q in F] for r in F]
        assert cov.tolist() == exact
        np.testing.assert_array_equal(cov, cov.T)
        np.testing.assert_allclose(cov, L @ L.T, rtol=1e-15, atol=0)
        tol = 1e-14 if dtype is F64 else 1e-6
        np.testing.assert_allclose(cov, default_feature_cov(), rtol=tol)


def test_reloaded_model_filters_identically():
    model = dj.seed_imm(_obs(), dtype=F64)
    loaded = dj.config_from_toml(dj.config_to_toml(model)).model
    z = np.random.default_rng(0).normal(0.0, 10.0, (20, 4))
    # Bit for bit: the models are bitwise equal and run through one compiled filter in one
    # process (the filter's own output is not specified across machines, README).
    a, b = dj.filter(model, z, 0.1), dj.filter(loaded, z, 0.1)
    assert float(a.log_likelihood) == float(b.log_likelihood)
    np.testing.assert_array_equal(np.asarray(a.regime_probs), np.asarray(b.regime_probs))


@settings(max_examples=25, deadline=None)
@given(
    theta=st.floats(0.0, 10.0),
    sigma=st.floats(1e-6, 1e3),
    alpha=st.lists(st.floats(-10.0, 10.0), min_size=2, max_size=2),
    rho=st.floats(-0.95, 0.95),
    mean=st.floats(-1e6, 1e6),
    dtype=st.sampled_from([F32, F64]),
)
def test_round_trip_property(theta, sigma, alpha, rho, mean, dtype):
    cov = np.array([[1.0, rho * 3.0], [rho * 3.0, 9.0]], dtype)
    obs = dj.Observation(np.array(alpha, dtype), cov)
    model = dj.KalmanModel(dj.OU(dtype(theta), dtype(sigma)), obs, dtype(mean), dtype(1.0))
    assert_same_model(dj.config_from_toml(dj.config_to_toml(model)).model, model)


HAND_WRITTEN = """
# What the production side writes: cov only, ints where natural, defaults left out.
schema_version = 1
kind = "imm"
transition = [[0.95, 0.04, 0.01], [0.05, 0.90, 0.05], [0.02, 0.08, 0.90]]
init_probs = [0.5, 0.3, 0.2]

[[regimes]]
name = "Quiet"
dynamics = "OU"
theta = 0.1
sigma = 0.3

[[regimes]]
name = "Trending"
dynamics = "OU"
theta = 0.02
sigma = 1

[[regimes]]
name = "Crisis"
dynamics = "OU"
theta = 0.005
sigma = 5

[observation]
feature_names = ["bim", "dbim"]
loadings = [1.0, 0.8]
cov = [[4.0, 2.8], [2.8, 4.0]]

[risk]
sigma_base = 10
crisis_amplifier = 2
"""


def test_hand_written_file_loads(tmp_path):
    path = tmp_path / "prod.toml"
    path.write_text(HAND_WRITTEN)
    cfg = dj.load_config(path)
    obs = dj.Observation([1.0, 0.8], [[4.0, 2.8], [2.8, 4.0]], feature_names=["bim", "dbim"])
    expected = dj.seed_imm(obs, init_probs=[0.5, 0.3, 0.2], dtype=F64)
    assert_same_model(cfg.model, expected)
    assert cfg.model.dtype == F64 and cfg.model.crisis_index == 2
    assert cfg.feature_names == ("bim", "dbim")
    assert float(cfg.risk.sigma_base) == 10.0 and cfg.risk.threshold == 0.3
    assert cfg.metadata == {}


def test_hand_written_kalman_with_only_the_cholesky_factor():
    text = """
schema_version = 1
kind = "kalman"
dtype = "float32"
init_mean = 0
init_cov = 4
[[regimes]]
dynamics = "OUAccel"
theta = 0.02
sigma = 1.0
theta_accel = 0.5
sigma_accel = 0.25
[observation]
loadings = [2.0]
cov_cholesky = [[3.0]]
"""
    cfg = dj.config_from_toml(text)
    assert cfg.risk is None and cfg.feature_names is None
    m = cfg.model
    assert m.dtype == F32 and m.dynamics.discretisation == "euler"
    assert m.observation.update == "joint"
    np.testing.assert_array_equal(np.asarray(m.observation.cov), [[9.0]])
    np.testing.assert_array_equal(np.asarray(m.init_cov), 4.0 * np.eye(2))


def _readme_block() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return readme.split("## Config files", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]


README_MODEL = dict(
    model=lambda: dj.seed_imm(
        dj.Observation(jnp.array([1.0, 0.8]), [[4.0, 2.8], [2.8, 4.0]]), dtype=F64
    ),
    risk=lambda: dj.RiskModel(F64(10.0), F64(2.0)),
    feature_names=("bim", "dbim"),
    metadata={"created": "2025-01-15T12:00:00Z", "fitted_by": "dj.fit on 2024-Q4 data"},
)


def test_readme_config_block_loads():
    cfg = dj.config_from_toml(_readme_block(), source="README.md")
    # Bit for bit is legitimate: the seed's init_probs (the exact stationary distribution)
    # and the Cholesky factor of cov are specified to the bit on every machine (README,
    # "Reproducibility"), so the README's numbers are the code's on any CPU / BLAS.
    assert_same_model(cfg.model, _named(README_MODEL["model"](), ("bim", "dbim")))
    assert cfg.feature_names == ("bim", "dbim") and float(cfg.risk.crisis_amplifier) == 2.0
    assert cfg.metadata == README_MODEL["metadata"]


def test_readme_config_block_is_what_the_writer_writes():
    """The README's block without its end-of-line comments is config_to_toml's text."""
    lines = _readme_block().splitlines()
    stripped = [line if line.startswith("#") else re.sub(r"\s+#.*$", "", line) for line in lines]
    text = dj.config_to_toml(
        README_MODEL["model"](),
        README_MODEL["risk"](),
        feature_names=README_MODEL["feature_names"],
        metadata=README_MODEL["metadata"],
    )
    # Exact text, numbers included: legitimate only because every number written is
    # specified to the bit (exact stationary distribution, plain-Python Cholesky, L L^T
    # exact and rounded once, repr), not computed by BLAS / LAPACK (README,
    # "Reproducibility"). If this fails after a change, regenerate the README block.
    assert "\n".join(stripped) + "\n" == text


GOOD = dj.config_to_toml(
    dj.seed_imm(dj.Observation([1.0, 0.8], [[4.0, 2.8], [2.8, 4.0]]), dtype=F64),
    dj.RiskModel(F64(10.0), F64(2.0)),
    feature_names=["bim", "dbim"],
)
GOOD_KALMAN = dj.config_to_toml(
    dj.KalmanModel(dj.OU(F64(0.1), F64(0.3)), dj.Observation([1.0], 1.0))
)


def _edit(text: str, old: str, new: str, count: int = 1) -> str:
    assert old in text, old
    return text.replace(old, new, count)


BAD = {
    "syntax": (_edit(GOOD, "kind = ", "kind == "), "not valid TOML"),
    "no_version": (
        _edit(GOOD, "schema_version = 1\n", ""),
        r"missing key `schema_version` \(this drift_jax reads \[1\]\)",
    ),
    "future_version": (
        _edit(GOOD, "schema_version = 1", "schema_version = 2"),
        r"`schema_version` is 2; this drift_jax reads schema versions \[1\]",
    ),
    "version_type": (
        _edit(GOOD, "schema_version = 1", 'schema_version = "1"'),
        r"`schema_version` must be an integer, got '1' \(str\)",
    ),
    "kind": (
        _edit(GOOD, 'kind = "imm"', 'kind = "ukf"'),
        r"`kind` must be one of \['kalman', 'imm'\], got 'ukf'",
    ),
    "dtype": (
        _edit(GOOD, '"float64"', '"float16"'),
        r"`dtype` must be one of \['float32', 'float64'\]",
    ),
    "missing_sigma": (
        _edit(GOOD, "sigma = 1.0\n", ""),
        r"missing key `regimes\[1\]\.sigma` \(number\)",
    ),
    "sigma_type": (
        _edit(GOOD, "sigma = 1.0", 'sigma = "1.0"'),
        r"`regimes\[1\]\.sigma` must be a number, got '1.0' \(str\)",
    ),
    "sigma_bool": (
        _edit(GOOD, "sigma = 0.3", "sigma = true"),
        r"`regimes\[0\]\.sigma` must be a number, got True",
    ),
    "sigma_negative": (
        _edit(GOOD, "sigma = 5.0", "sigma = -5.0"),
        r"`regimes\[2\]` is invalid: `sigma` must be finite and >= 0",
    ),
    "unknown_key": (
        _edit(GOOD, "sigma = 0.3", "sgima = 0.3"),
        r"`regimes\[0\]\.sgima` is not a known key here",
    ),
    "accel_key_on_ou": (
        _edit(GOOD, "sigma = 0.3", "sigma = 0.3\nsigma_accel = 1.0"),
        r"`regimes\[0\]\.sigma_accel` is not a known key here",
    ),
    "dynamics": (
        _edit(GOOD, 'dynamics = "OU"', 'dynamics = "GARCH"'),
        r"`regimes\[0\]\.dynamics` must be one of \['OU', 'OUAccel'\]",
    ),
    "discretisation": (
        _edit(GOOD, '"euler"', '"rk4"'),
        r"`regimes\[0\]\.discretisation` must be one of",
    ),
    "no_regimes": (re.sub(r"\[\[regimes\]\][^\[]*", "", GOOD), r"missing key `regimes`"),
    "no_observation": (
        GOOD.split("[observation]")[0] + "[risk]" + GOOD.split("[risk]")[1],
        r"missing key `observation` \(table\)",
    ),
    "no_cov": (
        re.sub(
            r"cov = \[[^\]]*\][^\]]*\][^\]]*\]\n",
            "",
            re.sub(r"cov_cholesky = \[[^\]]*\][^\]]*\][^\]]*\]\n", "", GOOD),
        ),
        r"missing key `observation\.cov` \(or `observation\.cov_cholesky`\)",
    ),
    "cov_disagrees": (
        _edit(GOOD, "[2.8, 3.9999999999999996]", "[2.8, 4.1]"),
        r"`observation\.cov` disagrees with cov_cholesky @ cov_cholesky\.T: max difference 0\.1",
    ),
    "cov_shape": (
        _edit(GOOD, "loadings = [1.0, 0.8]", "loadings = [1.0, 0.8, 0.5]"),
        r"`observation\.cov` must be \[m, m\] = \[3, 3\]",
    ),
    "cholesky_upper": (
        _edit(GOOD, "[2.0, 0.0]", "[2.0, 0.5]"),
        r"`observation\.cov_cholesky` must be lower triangular with a positive diagonal",
    ),
    "ragged": (
        _edit(GOOD, "[2.0, 0.0]", "[2.0]"),
        r"`observation\.cov_cholesky` must be a matrix with rows of one length",
    ),
    "feature_names": (
        _edit(GOOD, '["bim", "dbim"]', '["bim"]'),
        r"`observation\.feature_names` must hold 2 names",
    ),
    "update": (
        _edit(GOOD, 'update = "joint"', 'update = "both"'),
        r"`observation\.update` must be one of \['joint', 'independent'\]",
    ),
    "transition": (
        _edit(GOOD, "[0.95, 0.04, 0.01]", "[0.95, 0.04, 0.02]"),
        r"invalid model: `transition` must be row-stochastic",
    ),
    "transition_type": (
        _edit(GOOD, "[0.95, 0.04, 0.01]", '[0.95, 0.04, "x"]'),
        r"`transition` must be a matrix",
    ),
    "crisis_name": (
        _edit(GOOD, 'crisis_regime = "Crisis"', 'crisis_regime = "Panic"'),
        r"invalid model: `crisis_regime` must be one of",
    ),
    "risk_threshold": (
        _edit(GOOD, "threshold = 0.3", "threshold = 2.0"),
        r"`risk` is invalid: `threshold` must be in \[0, 1\]",
    ),
    "risk_missing": (
        _edit(GOOD, "sigma_base = 10.0\n", ""),
        r"missing key `risk\.sigma_base` \(number\)",
    ),
    "metadata_type": (
        _edit(GOOD, "schema_version = 1", "schema_version = 1\nmetadata = 3"),
        r"`metadata` must be a table, got 3",
    ),
    "kalman_two_regimes": (
        GOOD_KALMAN.replace(
            "[observation]",
            '[[regimes]]\ndynamics = "OU"\ntheta = 1.0\nsigma = 1.0\n\n[observation]',
        ),
        r"`regimes` must hold exactly 1 regime for kind 'kalman', got 2",
    ),
    "kalman_transition": (
        _edit(GOOD_KALMAN, "init_mean", "transition = [[1.0]]\ninit_mean"),
        r"`transition` is not a known key here",
    ),
    "init_cov": (
        _edit(GOOD_KALMAN, "[1.0],\n]", "[-1.0],\n]"),
        r"invalid model: `init_cov` must be positive definite",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_raises_a_clear_error(case, tmp_path):
    text, match = BAD[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    with pytest.raises(dj.ConfigError, match=match) as info:
        dj.load_config(path)
    assert str(info.value).startswith(str(path))  # the file is named
    assert isinstance(info.value, ValueError)


def test_good_texts_are_good():
    assert isinstance(dj.config_from_toml(GOOD).model, dj.IMMModel)
    assert isinstance(dj.config_from_toml(GOOD_KALMAN).model, dj.KalmanModel)


def test_syntax_error_keeps_tomllib_detail():
    with pytest.raises(dj.ConfigError, match=r"<config>: not valid TOML: .*line 4") as info:
        dj.config_from_toml(BAD["syntax"][0])
    assert isinstance(info.value.__cause__, tomllib.TOMLDecodeError)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        dj.load_config("/nonexistent/drift.toml")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": dj.OU(0.1, 0.3)}, r"`model` must be a dj\.KalmanModel or dj\.IMMModel"),
        ({"risk": 10.0}, r"`risk` must be a dj\.RiskModel or None, got float"),
        ({"feature_names": ["a", "b"]}, r"`feature_names` must be 4 strings"),
        ({"metadata": {"fn": object()}}, r"`metadata` must hold TOML values only"),
        ({"metadata": [1, 2]}, r"`metadata` must be a dict, got list"),
    ],
)
def test_bad_save_arguments(kwargs, match):
    args = {"model": _kalman_ou()} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        dj.config_to_toml(**args)
