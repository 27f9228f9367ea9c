"""Every bad input to the IMM raises a ``ValueError`` that names the argument."""

import equinox as eqx
import jax
import numpy as np
import pytest

import drift_jax as dj

OBS = dj.Observation.scalar(1.0)
THREE = (dj.OU(0.1, 0.3), dj.OU(0.02, 1.0), dj.OU(0.005, 5.0))
PI = np.array([[0.95, 0.04, 0.01], [0.05, 0.90, 0.05], [0.02, 0.08, 0.90]])


def _imm(**changes):
    kwargs = {"dynamics": THREE, "observation": OBS, "transition": PI, "init_probs": None}
    kwargs.update(changes)
    return dj.IMMModel(**kwargs)


def test_valid_model_builds():
    imm = _imm(regime_names=("Quiet", "Trending", "Crisis"))
    assert imm.num_regimes == 3 and imm.crisis_index == 2
    np.testing.assert_allclose(imm.init_probs, np.full(3, 1 / 3))


def test_rows_not_summing_to_one():
    with pytest.raises(ValueError, match="transition"):
        _imm(transition=PI * 1.05)


def test_columns_summing_to_one_is_not_row_stochastic():
    col = np.array([[0.9, 0.2, 0.1], [0.05, 0.7, 0.1], [0.05, 0.1, 0.8]])  # column-stochastic
    with pytest.raises(ValueError, match="row-stochastic"):
        _imm(transition=col)


def test_negative_transition_entry():
    bad = np.array([[1.1, -0.1, 0.0], [0.05, 0.90, 0.05], [0.02, 0.08, 0.90]])
    with pytest.raises(ValueError, match="transition"):
        _imm(transition=bad)


def test_nan_transition_entry():
    bad = PI.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="transition"):
        _imm(transition=bad)


def test_transition_size_not_matching_the_models():
    with pytest.raises(ValueError, match="transition"):
        _imm(transition=[[0.9, 0.1], [0.2, 0.8]])


def test_transition_not_square():
    with pytest.raises(ValueError, match="transition"):
        _imm(transition=PI[:2])


def test_init_probs_negative():
    with pytest.raises(ValueError, match="init_probs"):
        _imm(init_probs=[1.2, -0.1, -0.1])


def test_init_probs_not_summing_to_one():
    with pytest.raises(ValueError, match="init_probs"):
        _imm(init_probs=[0.5, 0.3, 0.1])


def test_init_probs_wrong_size():
    with pytest.raises(ValueError, match="init_probs"):
        _imm(init_probs=[0.5, 0.5])


def test_unequal_state_sizes_without_embedding():
    mixed = (dj.OU(0.1, 0.3), dj.OUAccel(0.02, 1.0, 0.5, 0.5), dj.OU(0.005, 5.0))
    with pytest.raises(ValueError, match="dynamics"):
        _imm(dynamics=mixed, embed=False)
    assert _imm(dynamics=mixed).state_dim == 2  # embedding is the default


def test_no_dynamics():
    with pytest.raises(ValueError, match="dynamics"):
        _imm(dynamics=(), transition=np.zeros((0, 0)))


def test_member_that_is_not_a_dynamics():
    with pytest.raises(ValueError, match=r"dynamics\[1\]"):
        _imm(dynamics=(dj.OU(0.1, 0.3), "Trending", dj.OU(0.005, 5.0)))


def test_observation_of_the_wrong_type():
    with pytest.raises(ValueError, match="observation"):
        _imm(observation=np.eye(1))


def test_unknown_crisis_regime_name():
    with pytest.raises(ValueError, match="crisis_regime"):
        _imm(regime_names=("Quiet", "Trending", "Crisis"), crisis_regime="Panic")


def test_crisis_regime_index_out_of_range():
    with pytest.raises(ValueError, match="crisis_regime"):
        _imm(crisis_regime=3)


def test_regime_names_wrong_length():
    with pytest.raises(ValueError, match="regime_names"):
        _imm(regime_names=("Quiet", "Crisis"))


def test_traced_non_stochastic_transition_raises_at_run_time():
    @eqx.filter_jit
    def build(Pi):
        return _imm(transition=Pi).transition

    build(PI)  # a valid matrix passes the traced check
    with pytest.raises(Exception, match="transition"):
        jax.block_until_ready(build(PI * 1.05))


def test_filter_observations_of_the_wrong_width():
    with pytest.raises(ValueError, match="zs"):
        dj.filter(_imm(), np.zeros((5, 2)), 0.5)


def test_filter_infinite_observation():
    with pytest.raises(ValueError, match="zs"):
        dj.filter(_imm(), [0.0, np.inf, 1.0], 0.5)


def test_filter_negative_dt():
    # dt = 0 is allowed (equal timestamps: an update with no prediction, README "Data
    # input, equal timestamps and streaming"); a negative step is an error.
    with pytest.raises(ValueError, match="dt"):
        dj.filter(_imm(), [0.0, 1.0, 2.0], [0.5, -0.1, 0.5])


def test_exact_posterior_series_too_long():
    with pytest.raises(ValueError, match="zs"):
        dj.exact_posterior(_imm(), np.zeros(20), 0.5)
