"""Errors inside compiled code read as one line under dj.jit (issue 15, item 5).

Under a plain jax.jit a failed traced check is JAX's multi-line "CpuCallback error"; these
tests pin what dj.jit gives instead: dj.TracedCheckError (a ValueError) whose message is
the check's own, the same text as the eager call's error."""

import jax
import numpy as np
import pytest

import drift_jax as dj

MODEL = dj.seed_imm(dj.Observation.scalar(4.0))
INF = "`zs` must not contain +-inf (NaN marks missing)."
NEG_DT = "`dt` must be finite and >= 0"


@pytest.fixture(scope="module")
def loglik():
    return dj.jit(lambda z, d: dj.filter(MODEL, z, d).log_likelihood)


def test_a_good_call_equals_the_eager_filter(loglik):
    z = np.random.default_rng(0).normal(size=40)
    want = dj.filter(MODEL, z, 0.5).log_likelihood
    np.testing.assert_allclose(float(loglik(z, 0.5)), float(want), rtol=1e-13)


def test_an_infinite_feature_is_one_line(loglik):
    z = np.zeros(30)
    z[7] = np.inf
    with pytest.raises(dj.TracedCheckError) as info:
        loglik(z, 0.5)
    assert str(info.value) == INF and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)
    assert type(info.value.equinox_error).__name__.endswith("EquinoxRuntimeError")
    with pytest.raises(ValueError, match=r"\+-inf"):  # the eager call says the same
        dj.filter(MODEL, z, 0.5)


def test_a_negative_step_is_one_line(loglik):
    dt = np.full(30, 0.5)
    dt[-1] = -1.0
    with pytest.raises(dj.TracedCheckError, match=NEG_DT) as info:
        loglik(np.zeros(30), dt)
    assert "\n" not in str(info.value)


def test_a_string_is_a_type_error_before_tracing():
    # dj.jit keeps non-array arguments static: the library's own check sees the string.
    run = dj.jit(lambda z: dj.filter(MODEL, z, 0.5).log_likelihood)
    with pytest.raises((TypeError, ValueError), match="zs"):
        run("1.0, 2.0")


def test_other_errors_pass_through():
    boom = dj.jit(lambda x: jax.numpy.reshape(x, (7,)))
    with pytest.raises(TypeError):
        boom(np.zeros(3))
    assert dj.TracedCheckError.__module__ == "drift_jax"
