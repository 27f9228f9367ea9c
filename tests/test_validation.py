"""The argument checks of ``drift_jax._core.validate`` (the one home of them) and how
public functions use them: a wrong *type* raises a ``TypeError`` (``ArgumentTypeError``,
also a ``ValueError`` for code written against earlier versions), a bad *value* a
``ValueError``; both name the argument.

Under the test run's ``--jaxtyping-packages`` hook an annotated public argument may be
caught first by its annotation (a ``jaxtyping.TypeCheckError``, also a ``TypeError``,
whose message names the parameter): the public-function tests below therefore assert
``TypeError`` for wrong types, and only the argument's name where it is annotated."""

import jax
import numpy as np
import pandas as pd
import pytest

import drift_jax as dj
from drift_jax._core import validate as v


def _bad_value(excinfo) -> None:
    """A bad value is a plain ``ValueError``, not a type error."""
    assert not isinstance(excinfo.value, TypeError)


# --- the validators -------------------------------------------------------------------------


def test_argument_type_error_is_both():
    assert issubclass(v.ArgumentTypeError, TypeError)
    assert issubclass(v.ArgumentTypeError, ValueError)


def test_message_names_argument_value_and_allowed():
    assert v.message("n", 0, "an int >= 1") == "`n` must be an int >= 1, got n=0."


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3)])
def test_positive_int_accepts_ints(value):
    out = v.positive_int("n", value)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [0, -2])
def test_positive_int_bad_value(value):
    with pytest.raises(ValueError, match=rf"`n` must be an int >= 1, got n={value}\.") as e:
        v.positive_int("n", value)
    _bad_value(e)


@pytest.mark.parametrize("value", [True, np.True_, 2.5, 3.0, "3", None, [3], np.array([3])])
def test_positive_int_wrong_type(value):
    with pytest.raises(v.ArgumentTypeError, match=r"`n` must be an int >= 1, got n="):
        v.positive_int("n", value)


def test_positive_int_noun():
    with pytest.raises(ValueError, match=r"`steps` must be an integer >= 1, got steps=0"):
        v.positive_int("steps", 0, "an integer")


def test_nonnegative_int():
    assert v.nonnegative_int("i", 0) == 0
    with pytest.raises(ValueError, match=r"`i` must be an int >= 0, got i=-1\.") as e:
        v.nonnegative_int("i", -1)
    _bad_value(e)
    with pytest.raises(TypeError, match=r"`i` must be an int >= 0, got i=False"):
        v.nonnegative_int("i", False)


def test_int_at_least_and_integer():
    assert v.int_at_least("k", 2, 2) == 2
    with pytest.raises(ValueError, match=r"`k` must be an int >= 2, got k=1\."):
        v.int_at_least("k", 1, 2)
    assert v.integer("j", 1, "an index in [0, 3)", lambda i: 0 <= i < 3) == 1
    with pytest.raises(ValueError, match=r"`j` must be an index in \[0, 3\), got j=3\.") as e:
        v.integer("j", 3, "an index in [0, 3)", lambda i: 0 <= i < 3)
    _bad_value(e)
    with pytest.raises(TypeError, match=r"`j` must be an index in \[0, 3\), got j=1\.0"):
        v.integer("j", 1.0, "an index in [0, 3)", lambda i: 0 <= i < 3)


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.float64(0.5), np.array(0.5)])
def test_real_accepts_real_scalars(value):
    out = v.real("x", value, "a number")
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", [True, "0.5", None, [0.5], np.ones(2), 1j, object()])
def test_real_wrong_type(value):
    with pytest.raises(v.ArgumentTypeError, match=r"`x` must be a number, got x="):
        v.real("x", value, "a number")


def test_real_bad_value():
    with pytest.raises(ValueError, match=r"`x` must be in \(0, 1\), got x=2\.0\.") as e:
        v.real("x", 2.0, "in (0, 1)", lambda x: 0 < x < 1)
    _bad_value(e)


def test_float_shorthands():
    assert v.finite_float("x", -3) == -3.0
    assert v.positive_float("x", 2) == 2.0
    assert v.nonnegative_float("x", 0.0) == 0.0
    assert v.probability("p", 1) == 1.0
    for func, bad, allowed in [
        (v.finite_float, np.inf, "a finite number"),
        (v.positive_float, 0.0, "a number > 0"),
        (v.positive_float, np.nan, "a number > 0"),
        (v.nonnegative_float, -1.0, "a number >= 0"),
        (v.probability, 1.5, r"in \[0, 1\]"),
        (v.probability, np.nan, r"in \[0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=rf"`x` must be {allowed}, got x=") as e:
            func("x", bad)
        _bad_value(e)
    with pytest.raises(TypeError, match=r"`x` must be a number of seconds > 0, got x='1'"):
        v.positive_float("x", "1", "a number of seconds > 0")


def test_boolean():
    assert v.boolean("flag", True) is True
    assert v.boolean("flag", np.False_) is False
    for bad in (1, 0, "yes", None):
        with pytest.raises(v.ArgumentTypeError, match=r"`flag` must be True or False, got "):
            v.boolean("flag", bad)


def test_one_of():
    assert v.one_of("update", "joint", ("joint", "independent")) == "joint"
    with pytest.raises(
        ValueError, match=r"`update` must be one of \('joint', 'independent'\), got 'jiont'\."
    ) as e:
        v.one_of("update", "jiont", ("joint", "independent"))
    _bad_value(e)
    with pytest.raises(v.ArgumentTypeError, match=r"`update` must be one of .*, got 3\."):
        v.one_of("update", 3, ("joint", "independent"))
    with pytest.raises(ValueError, match=r"`update` must be 'joint' or 'independent', got 'x'"):
        v.one_of("update", "x", ("joint", "independent"), "'joint' or 'independent'")


def test_instance():
    risk = dj.RiskModel()
    assert v.instance("risk", risk, dj.RiskModel, "a dj.RiskModel") is risk
    with pytest.raises(v.ArgumentTypeError, match=r"`risk` must be a dj\.RiskModel, got str\."):
        v.instance("risk", "risk", dj.RiskModel, "a dj.RiskModel")


def test_prng_key():
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        assert v.prng_key("key", key) is key
    for bad in (0, np.array([0, 1], np.uint32), jax.numpy.zeros(3, jax.numpy.uint32)):
        with pytest.raises(v.ArgumentTypeError, match=r"`key` must be a JAX PRNG key"):
            v.prng_key("key", bad)


def test_as_float_array():
    assert v.as_float_array("a", [1, 2]).dtype == jax.numpy.result_type(float)
    for bad in ("abc", None, b"1"):
        with pytest.raises(v.ArgumentTypeError, match=r"`a` must be a number or an array"):
            v.as_float_array("a", bad)
    with pytest.raises(v.ArgumentTypeError, match=r"`a` must be a number or an array .* dict"):
        v.as_float_array("a", {"x": 1.0})


def test_array_checks():
    with pytest.raises(ValueError, match=r"`s` must be finite and > 0; got s=0\.0"):
        v.positive("s", 0.0)
    with pytest.raises(ValueError, match=r"`s` must be finite and >= 0; got s=.*bad: \[-1\.\]"):
        v.nonnegative("s", [1.0, -1.0])
    with pytest.raises(ValueError, match=r"`s` must be a scalar, got an array of shape \(2,\)"):
        v.scalar("s", v.as_float_array("s", [1.0, 2.0]))


# --- public functions: wrong types are TypeErrors, bad values ValueErrors naming the argument


@pytest.fixture(scope="module")
def model():
    return dj.KalmanModel(dj.OU(0.2, 1.0), dj.Observation.scalar(1.0), 0.0, 1.0)


@pytest.fixture(scope="module")
def paths():
    return dj.simulate(dj.seed_imm(), jax.random.key(0), n_paths=2, n_steps=5, dt=0.5)


ZS = np.array([0.1, -0.2, 0.3])


def test_filter_with_a_string_model():
    with pytest.raises(TypeError, match=r"`model` must be a dj\.KalmanModel or dj\.IMMModel"):
        dj.filter("kalman", ZS, 1.0)


def test_fit_with_a_non_model(model):
    with pytest.raises(TypeError, match=r"`model` must be a dj\.KalmanModel or dj\.IMMModel"):
        dj.fit({"theta": 0.1}, ZS, 1.0, progress=False)
    with pytest.raises(TypeError, match=r"`steps` must be an integer >= 1, got steps=2\.5"):
        dj.fit(model, ZS, 1.0, steps=2.5, progress=False)


@pytest.mark.parametrize("n_paths", [2.5, "3", True, None])
def test_simulate_n_paths_wrong_type(model, n_paths):
    with pytest.raises(TypeError, match=r"`n_paths` must be an int >= 1"):
        dj.simulate(model, jax.random.key(0), n_paths=n_paths, n_steps=4, dt=1.0)


def test_simulate_bad_values(model):
    with pytest.raises(ValueError, match=r"`n_paths` must be an int >= 1, got n_paths=0") as e:
        dj.simulate(model, jax.random.key(0), n_paths=0, n_steps=4, dt=1.0)
    _bad_value(e)
    with pytest.raises(TypeError, match=r"`n_steps` must be an int >= 1, got n_steps=4\.0"):
        dj.simulate(model, jax.random.key(0), n_paths=1, n_steps=4.0, dt=1.0)
    with pytest.raises(TypeError, match=r"`key` must be a JAX PRNG key"):
        dj.simulate(model, 0, n_paths=1, n_steps=4, dt=1.0)


def test_model_parts_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"`loadings` must be a number or an array of numbers"):
        dj.Observation("abc", 1.0)
    with pytest.raises(TypeError, match=r"`dynamics` must be dj\.OU or dj\.OUAccel, got str"):
        dj.KalmanModel("ou", dj.Observation.scalar(1.0))
    with pytest.raises(TypeError, match=r"`observation` must be a dj\.Observation, got float"):
        dj.KalmanModel(dj.OU(0.2, 1.0), 1.0)
    with pytest.raises(TypeError, match=r"`dynamics\[1\]` must be dj\.OU or dj\.OUAccel"):
        dj.IMMModel([dj.OU(0.2, 1.0), "ou"], dj.Observation.scalar(1.0), np.eye(2))
    with pytest.raises(TypeError, match=r"`transition` must be a matrix of numbers"):
        dj.stationary_distribution("abc")


def test_risk_model_threshold():
    with pytest.raises(TypeError):
        dj.RiskModel(threshold="x")
    with pytest.raises(TypeError):
        dj.RiskModel(threshold=True)
    with pytest.raises(ValueError, match=r"`threshold` must be in \[0, 1\], got threshold=1\.5"):
        dj.RiskModel(threshold=1.5)


def test_monte_carlo_wrong_types(model, paths):
    imm = dj.seed_imm()
    with pytest.raises(TypeError, match=r"`estimators` must be a model or a non-empty dict"):
        dj.monte_carlo([imm], paths)
    with pytest.raises(TypeError, match=r"`estimators\['a'\]` must be a dj\.KalmanModel"):
        dj.monte_carlo({"a": "imm"}, paths)
    with pytest.raises(TypeError, match=r"`paths` must be dj\.Paths, a simulator"):
        dj.monte_carlo({"a": imm}, "paths")
    with pytest.raises(ValueError, match=r"`estimators` must be a model or a non-empty dict"):
        dj.monte_carlo({}, paths)
    with pytest.raises(ValueError, match=r"`chunk_size` must be an int >= 1, got chunk_size=0"):
        dj.monte_carlo({"a": imm}, paths, chunk_size=0)
    with pytest.raises(ValueError, match=r"`threshold` must be in \[0, 1\], got threshold=2\.0"):
        dj.monte_carlo({"a": imm}, paths, threshold=2.0)


def test_calibrate_observation_settings():
    rng = np.random.default_rng(0)
    mu = rng.normal(0.0, 10.0, 200)
    z = np.outer(mu, [1.0, 0.5]) + rng.normal(0.0, 2.0, (200, 2))
    with pytest.raises(TypeError, match="intercept"):
        dj.calibrate_observation(z, mu, intercept=1)
    with pytest.raises(TypeError, match=r"`shrinkage` must be None, 'ledoit-wolf' or an inten"):
        dj.calibrate_observation(z, mu, shrinkage="lots")
    with pytest.raises(ValueError, match=r"`shrinkage` must be None, .*, got shrinkage=1\.5") as e:
        dj.calibrate_observation(z, mu, shrinkage=1.5)
    _bad_value(e)
    with pytest.raises(ValueError, match=r"`min_rows` must be an int >= 2, got min_rows=1") as e:
        dj.calibrate_observation(z, mu, min_rows=1)
    _bad_value(e)


def test_metrics_settings():
    p, reg = np.array([0.1, 0.5, 0.2]), np.array([0, 2, 0])
    with pytest.raises(TypeError, match="num_regimes"):
        dj.metrics.rmse_by_regime(p, p, reg, 2.5)
    with pytest.raises(TypeError, match="crisis_index"):
        dj.metrics.detection_latency(p, reg, 1.0, crisis_index=2.0)
    with pytest.raises(TypeError, match="where"):
        dj.metrics.rmse(p, p, where=np.ones(3))


def test_streaming_estimator_model():
    with pytest.raises(TypeError, match="model"):
        dj.KalmanDriftEstimator(dj.seed_imm())
    est = dj.KalmanDriftEstimator(
        dj.KalmanModel(dj.OU(0.2, 1.0), dj.Observation.scalar(1.0), 0.0, 1.0)
    )
    with pytest.raises(TypeError, match=r"`dt` must be a scalar step length in seconds"):
        est.update_observation(0.1, "1")


def test_read_history_and_golden_vectors(model):
    with pytest.raises(TypeError, match=r"`history` must be a CSV / Parquet path or a pandas"):
        dj.read_history(3)
    df = pd.DataFrame({"time": [0.0, 1.0, 2.0], "f": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match=r"`first_dt` must be a number of seconds > 0") as e:
        dj.read_history(df, first_dt=-1.0)
    _bad_value(e)
    with pytest.raises(TypeError, match=r"`model` must be a dj\.KalmanModel or dj\.IMMModel"):
        dj.golden_vectors("model", ZS, 1.0)


def test_scenario_key():
    with pytest.raises(TypeError, match=r"`key` must be a JAX PRNG key"):
        dj.scenarios.reversal(0, n_paths=1, n_steps=10)
