"""Constraints declared on the fields (issue 10, item 3): a dynamics class the library has
never seen is trained, fitted, reported and checked by its fields' declared constraints,
not by their names; each constraint's round trip and validity check (hypothesis); the
built-in models' free coordinates are bit-identical to the formulas used before the
declarations; a field without a declaration is a clear error when trained."""

import functools
from typing import ClassVar

import equinox as eqx
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from jaxtyping import Array, Float

import drift_jax as dj

from .conftest import ou_features

# --- a dynamics class defined here: names the library has never seen ----------------------


class Reverting(dj.AbstractDynamics):
    """``d mu = -kappa mu dt + sigma dW`` with Euler steps: the OU model, renamed.

    ``kappa`` is declared positive (trained as ``log kappa``); ``sigma`` is declared real
    (trained as itself, sign free: only ``sigma^2`` enters): the name ``sigma`` does not
    make it log-scaled.
    """

    kappa: Float[Array, ""] = eqx.field(
        converter=jnp.asarray, metadata={"constraint": dj.Positive()}
    )
    sigma: Float[Array, ""] = eqx.field(converter=jnp.asarray, metadata={"constraint": dj.Real()})
    discretisation: str = eqx.field(static=True)  # AbstractDynamics' first field: pass by name
    state_dim: ClassVar[int] = 1

    def transition(self, dt):
        dt = jnp.asarray(dt, self.kappa.dtype)
        return jnp.exp(-self.kappa * dt).reshape(1, 1), (self.sigma**2 * dt).reshape(1, 1)

    @property
    def half_life(self):
        return jnp.log(2.0) / self.kappa


class Undeclared(dj.AbstractDynamics):
    """A dynamics whose field ``rho`` declares no constraint."""

    kappa: Float[Array, ""] = eqx.field(
        converter=jnp.asarray, metadata={"constraint": dj.Positive()}
    )
    rho: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    discretisation: str = eqx.field(static=True)  # AbstractDynamics' first field: pass by name
    state_dim: ClassVar[int] = 1

    def transition(self, dt):
        dt = jnp.asarray(dt, self.kappa.dtype)
        return jnp.exp(-self.kappa * dt).reshape(1, 1), (self.rho**2 * dt).reshape(1, 1)

    @property
    def half_life(self):
        return jnp.log(2.0) / self.kappa


T, DT = 800, 1.0
ZS = ou_features(3, T, DT, 0.2, 0.8, 1.5)


def _model(kappa=0.5, sigma=1.0):
    return dj.KalmanModel(
        Reverting(kappa=kappa, sigma=sigma, discretisation="euler"),
        dj.Observation.scalar(2.0),
        0.0,
        1.0,
    )


def test_new_field_trains_in_log_space_because_of_its_metadata():
    model = _model(0.4, -1.2)  # a negative sigma is valid: declared Real
    raw = dj.unconstrain(model, lambda m: m.dynamics)
    kappa, sigma = model.dynamics.kappa, model.dynamics.sigma
    assert isinstance(raw.dynamics.kappa.constraint, dj.Positive)
    assert np.asarray(raw.dynamics.kappa.raw).tobytes() == np.asarray(jnp.log(kappa)).tobytes()
    assert np.asarray(raw.dynamics.sigma.raw).tobytes() == np.asarray(sigma).tobytes()
    back = dj.constrain(raw, model)
    np.testing.assert_allclose(back.dynamics.kappa, kappa, rtol=1e-15)
    assert back.dynamics.sigma.tobytes() == sigma.tobytes()
    # Moving the free coordinates: kappa stays positive whatever the move.
    moved = eqx.tree_at(lambda r: r.dynamics.kappa.raw, raw, jnp.asarray(-40.0))
    assert 0.0 < float(dj.constrain(moved, model).dynamics.kappa) < 1e-17
    # A positive field at 0 cannot be trained in log coordinates, whatever its name.
    with pytest.raises(ValueError, match=r"`kappa` \(\.dynamics\.kappa\) is trainable but"):
        dj.unconstrain(_model(0.0, 1.0))
    # The built-in OU's `sigma` is still declared non-negative: log coordinates.
    ou = dj.unconstrain(dj.OU(0.1, 2.0))
    assert isinstance(ou.sigma.constraint, dj.NonNegative)
    assert np.asarray(ou.sigma.raw).tobytes() == np.asarray(jnp.log(jnp.asarray(2.0))).tobytes()


LBFGS_OPTS = dict(optimizer=optax.lbfgs(), steps=100, rtol=0, progress=False)


@functools.cache
def _ou_fit():
    # dj.OU's MLE on ZS, shared by the two tests below (one fit, one compilation).
    ou_start = dj.KalmanModel(dj.OU(0.5, 1.0), dj.Observation.scalar(2.0), 0.0, 1.0)
    return dj.fit(ou_start, ZS, DT, **LBFGS_OPTS)


def test_new_dynamics_fit_matches_the_same_model_as_ou():
    # Same likelihood as dj.OU (Euler): the MLE must agree, in other coordinates.
    ou = _ou_fit()
    new = dj.fit(_model(0.5, 1.0), ZS, DT, **LBFGS_OPTS)
    kappa = float(new.model.dynamics.kappa)
    assert kappa > 0
    np.testing.assert_allclose(kappa, ou.model.dynamics.theta, rtol=1e-4)
    np.testing.assert_allclose(
        abs(float(new.model.dynamics.sigma)), ou.model.dynamics.sigma, rtol=1e-4
    )
    np.testing.assert_allclose(new.model.observation.cov, ou.model.observation.cov, rtol=1e-4)
    # Pushed towards 0 (a random walk's data): kappa stays > 0 along the whole path.
    walk = ou_features(4, T, DT, 0.0, 0.8, 1.5)
    res = dj.fit(_model(0.5, 1.0), walk, DT, optimizer=optax.adam(0.1), steps=60, progress=False)
    assert 0.0 < float(res.model.dynamics.kappa) < 0.5


def test_new_dynamics_standard_errors_use_its_declared_scales():
    ou = _ou_fit()
    d = ou.model.dynamics
    same = dj.KalmanModel(
        Reverting(kappa=d.theta, sigma=d.sigma, discretisation="euler"),
        ou.model.observation,
        0.0,
        1.0,
    )
    se_new = dj.standard_errors(same, ZS, DT)
    se_ou = dj.standard_errors(ou.model, ZS, DT)
    t = se_new.table
    assert list(t.index) == ["dynamics.kappa", "dynamics.sigma", "observation.cov[0,0]"]
    assert t["scale"].tolist() == ["log", "linear", "log"]
    assert se_new.raw_names == (
        "log(dynamics.kappa)",
        "dynamics.sigma",
        "log(observation.cov_chol[0,0])",
    )
    # At the optimum the delta-method errors do not depend on the coordinates.
    np.testing.assert_allclose(
        t["std_err"].to_numpy(), se_ou.table["std_err"].to_numpy(), rtol=1e-4
    )
    # kappa's interval is formed on the log scale; sigma's (declared Real) is symmetric.
    z = 1.959963984540054
    k_est, k_se = t.loc["dynamics.kappa", "estimate"], t.loc["dynamics.kappa", "std_err"]
    np.testing.assert_allclose(
        t.loc["dynamics.kappa", "ci_high"], k_est * np.exp(z * k_se / k_est)
    )
    s_est, s_se = t.loc["dynamics.sigma", "estimate"], t.loc["dynamics.sigma", "std_err"]
    np.testing.assert_allclose(
        t.loc["dynamics.sigma", ["ci_low", "ci_high"]].to_numpy(float),
        [s_est - z * s_se, s_est + z * s_se],
    )
    # Holding sigma fixed: kappa alone, trained in log coordinates like OU's theta.
    only_k = dj.standard_errors(same, ZS, DT, trainable=lambda p: p.model.dynamics.kappa)
    only_t = dj.standard_errors(ou.model, ZS, DT, trainable=lambda p: p.model.dynamics.theta)
    np.testing.assert_allclose(
        only_k.table["std_err"].to_numpy(), only_t.table["std_err"].to_numpy(), rtol=1e-10
    )


def test_a_field_without_a_constraint_is_an_error_when_trained():
    model = dj.KalmanModel(
        Undeclared(kappa=0.3, rho=0.9, discretisation="euler"), dj.Observation.scalar(2.0)
    )
    with pytest.raises(ValueError, match=r"Undeclared\.rho declares no constraint") as info:
        dj.unconstrain(model)
    assert "leave it out of `trainable`" in str(info.value)
    with pytest.raises(ValueError, match=r"`rho` \(\.dynamics\.rho\) is trainable"):
        dj.trainable_mask(model, lambda m: m.dynamics.rho)
    with pytest.raises(ValueError, match="declares no constraint"):
        dj.fit(model, ZS, DT, steps=2, progress=False)
    # Held fixed, it is simply carried along.
    raw = dj.unconstrain(model, lambda m: m.dynamics.kappa)
    assert dj.constrain(raw, model).dynamics.rho is model.dynamics.rho


def test_constraints_are_read_from_the_declarations():
    declared = {
        dj.OU: ("theta", "sigma"),
        dj.OUAccel: ("theta", "sigma", "theta_accel", "sigma_accel"),
        dj.RiskModel: ("sigma_base", "crisis_amplifier"),
        dj.Observation: ("loadings", "cov_chol"),
        dj.KalmanModel: ("init_mean", "init_cov"),
        dj.IMMModel: ("transition", "rates", "init_probs", "init_mean", "init_cov"),
        Reverting: ("kappa", "sigma"),
    }
    from drift_jax._models.constraints import constrained_fields

    for cls, names in declared.items():
        assert tuple(name for name, _ in constrained_fields(cls)) == names
    kinds = dict(constrained_fields(dj.IMMModel))
    assert kinds["transition"] == dj.SimplexRows() and kinds["init_probs"] == dj.Simplex()
    assert kinds["rates"] == dj.Generator()
    assert dict(constrained_fields(dj.Observation))["cov_chol"] == dj.LowerCholesky("cov")


# --- bit-identical to the formulas before the declarations --------------------------------


def _imm_params():
    obs = dj.Observation([1.0, 0.8], [[1.0, 0.3], [0.3, 2.0]])
    imm = dj.seed_imm(obs, extended=True, init_cov=[[1.0, 0.2], [0.2, 0.5]])
    return dj.FitParams(imm, dj.RiskModel(2.0, 1.5))


def _old_cholesky_coordinates(L):
    rows, cols = np.tril_indices(L.shape[-1])
    packed = L[rows, cols]
    on_diag = jnp.asarray(rows == cols)
    return jnp.where(on_diag, jnp.log(jnp.where(on_diag, packed, 1.0)), packed)


def _old_simplex_coordinates(P):
    rows = P.reshape(-1, P.shape[-1])
    out = []
    for row in rows:
        r = int(np.argmax(np.asarray(row)))
        lr = jnp.log(row) - jnp.log(row[r])
        out.append(jnp.concatenate([lr[:r], lr[r + 1 :]]))
    out = jnp.stack(out)
    return out[0] if P.ndim == 1 else out


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("which", ["fit_params", "seed"])
def test_built_in_free_coordinates_are_bit_identical_to_before(which):
    params = _imm_params() if which == "fit_params" else dj.FitParams(dj.seed_imm(), None)
    imm, risk = params
    raw = dj.unconstrain(params)
    for k, d in enumerate(imm.dynamics):
        for f in ("theta", "sigma", "theta_accel", "sigma_accel"):
            if hasattr(d, f):
                got = getattr(raw.model.dynamics[k], f).raw
                assert _same_bits(got, jnp.log(getattr(d, f))), (k, f)
    m = raw.model
    assert _same_bits(m.transition.raw, _old_simplex_coordinates(imm.transition))
    assert _same_bits(m.init_probs.raw, _old_simplex_coordinates(imm.init_probs))
    assert _same_bits(m.observation.loadings.raw, imm.observation.loadings)
    assert _same_bits(
        m.observation.cov_chol.raw, _old_cholesky_coordinates(jnp.tril(imm.observation.cov_chol))
    )
    assert _same_bits(m.init_mean.raw, imm.init_mean)
    assert _same_bits(m.init_cov.raw, _old_cholesky_coordinates(jnp.linalg.cholesky(imm.init_cov)))
    if risk is not None:
        assert _same_bits(raw.risk.sigma_base.raw, jnp.log(risk.sigma_base))
        assert _same_bits(raw.risk.crisis_amplifier.raw, jnp.log(risk.crisis_amplifier))
    # Seed IMM: Pi's diagonal is each row's reference; the logits are log(Pi_ij / Pi_ii).
    if which == "seed":
        Pi = np.asarray(imm.transition)
        assert m.transition.ref == (0, 1, 2)
        expect = [[np.log(Pi[i, j] / Pi[i, i]) for j in range(3) if j != i] for i in range(3)]
        np.testing.assert_allclose(m.transition.raw, expect, rtol=1e-14)


# --- each constraint: round trips and validity ---------------------------------------------

_floats = st.floats(-8.0, 8.0, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(_floats, min_size=3, max_size=3))
def test_positive_and_real_round_trip(y):
    y = jnp.asarray(y, jnp.float64)
    for c in (dj.Positive(), dj.NonNegative()):
        x = c.from_free(y, (3,), ())
        assert c.is_valid(x) and np.all(np.asarray(x) > 0)
        back, ref = c.to_free(x, "x", ".x")
        assert ref == ()
        np.testing.assert_allclose(back, y, rtol=0, atol=1e-14)
        np.testing.assert_allclose(c.from_free(back, (3,), ()), x, rtol=1e-15)
    x = dj.Real().from_free(y, (3,), ())
    assert _same_bits(dj.Real().to_free(x, "x", ".x")[0], y)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6))
def test_cholesky_and_positive_definite_round_trip(y):
    y = jnp.asarray(y, jnp.float64)
    L = dj.LowerCholesky().from_free(y, (3, 3), ())
    assert dj.LowerCholesky().is_valid(L)
    np.testing.assert_allclose(dj.LowerCholesky().to_free(L, "L", ".L")[0], y, rtol=0, atol=1e-14)
    S = dj.PositiveDefinite().from_free(y, (3, 3), ())
    assert dj.PositiveDefinite().is_valid(S)
    np.testing.assert_array_equal(S, S.T)
    np.testing.assert_allclose(
        dj.PositiveDefinite().to_free(S, "S", ".S")[0], y, rtol=0, atol=1e-9
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10.0, -1e-3), min_size=6, max_size=6))
def test_simplex_round_trip(y):
    # Free logits < 0: the reference entry (logit 0) is the largest, as to_free picks it.
    rows = jnp.asarray(y, jnp.float64).reshape(3, 2)
    ref = (0, 2, 1)
    P = dj.SimplexRows().from_free(rows, (3, 3), ref)
    assert dj.SimplexRows().is_valid(P)
    back, back_ref = dj.SimplexRows().to_free(P, "P", ".P")
    assert back_ref == ref
    np.testing.assert_allclose(back, rows, rtol=0, atol=1e-12)
    p = dj.Simplex().from_free(rows[0], (3,), (1,))
    assert dj.Simplex().is_valid(p)
    back, back_ref = dj.Simplex().to_free(p, "p", ".p")
    assert back_ref == (1,)
    np.testing.assert_allclose(back, rows[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(dj.Simplex().from_free(back, (3,), back_ref), p, rtol=1e-13)


@pytest.mark.parametrize(
    ("constraint", "value", "valid"),
    [
        (dj.Real(), [1.0, -2.0], True),
        (dj.Real(), [1.0, np.nan], False),
        (dj.Positive(), 0.5, True),
        (dj.Positive(), 0.0, False),
        (dj.Positive(), np.inf, False),
        (dj.NonNegative(), 0.0, True),
        (dj.NonNegative(), -1e-12, False),
        (dj.LowerCholesky(), [[2.0, 0.0], [1.5, 0.5]], True),
        (dj.LowerCholesky(), [[2.0, 0.1], [1.5, 0.5]], False),
        (dj.LowerCholesky(), [[2.0, 0.0], [1.5, -0.5]], False),
        (dj.LowerCholesky(), [[2.0, 0.0], [np.nan, 0.5]], False),
        (dj.PositiveDefinite(), [[1.0, 0.2], [0.2, 0.5]], True),
        (dj.PositiveDefinite(), [[1.0, 0.2], [0.3, 0.5]], False),
        (dj.PositiveDefinite(), [[1.0, 2.0], [2.0, 1.0]], False),
        (dj.Simplex(), [0.2, 0.0, 0.8], True),
        (dj.Simplex(), [0.2, 0.1, 0.8], False),
        (dj.Simplex(), [1.2, -0.2], False),
        (dj.Simplex(), [[0.5, 0.5]], False),
        (dj.SimplexRows(), [[0.9, 0.1, 0.0], [0.0, 0.0, 1.0], [0.3, 0.3, 0.4]], True),
        (dj.SimplexRows(), [[0.9, 0.2], [0.5, 0.5]], False),
        (dj.SimplexRows(), [0.5, 0.5], False),
    ],
)
def test_validity(constraint, value, valid):
    assert constraint.is_valid(np.asarray(value, np.float64)) is valid


def test_structural_zero_is_kept_exactly():
    P = jnp.asarray([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.3, 0.3, 0.4]])
    raw, ref = dj.SimplexRows().to_free(P, "P", ".P")
    assert ref == (0, 2, 2)
    moved = dj.SimplexRows().from_free(raw + 1.0, (3, 3), ref)
    assert float(moved[0, 2]) == 0.0 and float(moved[1, 0]) == 0.0


def test_config_reader_checks_values_by_their_declarations():
    text = dj.config_to_toml(
        dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(2.0)), dj.RiskModel(1.0, 2.0)
    )
    assert "theta = 0.1\nsigma = 0.5\n" in text
    assert "sigma_base = 1.0\ncrisis_amplifier = 2.0\n" in text
    with pytest.raises(
        dj.ConfigError, match=r"`risk` is invalid: `sigma_base` must be finite and > 0"
    ):
        dj.config_from_toml(text.replace("sigma_base = 1.0", "sigma_base = 0.0"))
    # crisis_amplifier is declared NonNegative: 0 is a valid (if untrainable) value.
    cfg = dj.config_from_toml(text.replace("crisis_amplifier = 2.0", "crisis_amplifier = 0.0"))
    assert float(cfg.risk.crisis_amplifier) == 0.0
    with pytest.raises(
        dj.ConfigError, match=r"`regimes\[0\]` is invalid: `theta` must be finite and >= 0"
    ):
        dj.config_from_toml(text.replace("theta = 0.1", "theta = -0.1"))
