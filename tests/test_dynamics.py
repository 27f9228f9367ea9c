"""Dynamics: the specification's euler transition, the exact one against oracles,
convergence as ``dt -> 0`` and continuity of the ``theta -> 0`` limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import drift_jax as dj

THETA_SIGMA_DT = [
    (0.02, 1.0, 0.1),
    (0.5, 0.3, 0.25),
    (2.0, 1.7, 1.0),
    (1e-4, 2.0, 0.5),  # theta dt = 5e-5: the series branch of the exact OU
    (3.0, 0.8, 0.0002),  # 2 theta dt = 1.2e-3: just past the series threshold
]

ACCEL_PARAMS = [
    (0.02, 1.0, 0.1, 0.5, 0.1),
    (0.7, 0.4, 1.3, 0.2, 0.5),
    (1.5, 2.0, 1.5, 1.0, 0.8),  # theta == theta_a: repeated eigenvalue of A
    (0.0, 1.0, 0.0, 0.3, 0.4),  # integrated random walk
]


def _np(x):
    return np.asarray(x, dtype=np.float64)


def _drift_matrix(theta, theta_a):
    return np.array([[-theta, 1.0], [0.0, -theta_a]])


def _van_loan_quadrature(theta, sigma, theta_a, sigma_a, dt):
    """``Q = int_0^dt e^{As} L L^T e^{A^T s} ds`` by adaptive quadrature (scipy)."""
    A = _drift_matrix(theta, theta_a)
    LLt = np.diag([sigma**2, sigma_a**2])

    def integrand(s):
        E = scipy.linalg.expm(A * s)
        return E @ LLt @ E.T

    Q, err = scipy.integrate.quad_vec(integrand, 0.0, dt, epsabs=1e-15, epsrel=1e-13)
    assert err < 1e-12
    return Q


# --- euler: exactly the specification ------------------------------------------------------


@pytest.mark.parametrize("theta, sigma, dt", THETA_SIGMA_DT)
def test_euler_scalar_is_the_specification(theta, sigma, dt):
    F, Q = dj.OU(theta, sigma).transition(dt)
    assert F.shape == (1, 1) and Q.shape == (1, 1)
    np.testing.assert_allclose(_np(F)[0, 0], np.exp(-theta * dt), rtol=1e-15, atol=0)
    np.testing.assert_allclose(_np(Q)[0, 0], sigma**2 * dt, rtol=1e-15, atol=0)


@pytest.mark.parametrize("theta, sigma, theta_a, sigma_a, dt", ACCEL_PARAMS)
def test_euler_extended_is_the_specification(theta, sigma, theta_a, sigma_a, dt):
    F, Q = dj.OUAccel(theta, sigma, theta_a, sigma_a).transition(dt)
    F_spec = np.array([[1.0 - theta * dt, dt], [0.0, 1.0 - theta_a * dt]])
    Q_spec = np.diag([sigma**2 * dt, sigma_a**2 * dt])
    np.testing.assert_allclose(_np(F), F_spec, rtol=1e-15, atol=0)
    np.testing.assert_allclose(_np(Q), Q_spec, rtol=1e-15, atol=0)


def test_default_discretisation_is_euler():
    assert dj.OU(0.1, 1.0).discretisation == "euler"
    assert dj.OUAccel(0.1, 1.0, 0.2, 0.3).discretisation == "euler"


# --- exact: against closed form, expm and quadrature --------------------------------------


@pytest.mark.parametrize("theta, sigma, dt", THETA_SIGMA_DT)
def test_exact_ou_equals_closed_form(theta, sigma, dt):
    F, Q = dj.OU(theta, sigma, discretisation="exact").transition(dt)
    # -expm1(-x) is exact to the last bit, so this oracle is accurate for every theta dt > 0.
    Q_oracle = sigma**2 * -np.expm1(-2.0 * theta * dt) / (2.0 * theta)
    np.testing.assert_allclose(_np(F)[0, 0], np.exp(-theta * dt), rtol=1e-15, atol=0)
    np.testing.assert_allclose(_np(Q)[0, 0], Q_oracle, rtol=1e-14, atol=0)


def test_exact_ou_is_continuous_across_the_series_threshold():
    # The implementation switches to a Taylor series below 2 theta dt = 1e-3.
    sigma, dt = 1.3, 1.0
    thetas = 0.5e-3 * np.array([0.5, 0.9, 0.999, 0.9999, 1.0, 1.0001, 1.001, 1.1, 2.0])
    Qs = np.array(
        [_np(dj.OU(t, sigma, discretisation="exact").transition(dt)[1])[0, 0] for t in thetas]
    )
    oracle = sigma**2 * -np.expm1(-2.0 * thetas * dt) / (2.0 * thetas)
    np.testing.assert_allclose(Qs, oracle, rtol=1e-14, atol=0)


@pytest.mark.parametrize("theta, sigma, theta_a, sigma_a, dt", ACCEL_PARAMS)
def test_exact_extended_equals_expm_and_quadrature(theta, sigma, theta_a, sigma_a, dt):
    F, Q = dj.OUAccel(theta, sigma, theta_a, sigma_a, discretisation="exact").transition(dt)
    F_oracle = scipy.linalg.expm(_drift_matrix(theta, theta_a) * dt)
    Q_oracle = _van_loan_quadrature(theta, sigma, theta_a, sigma_a, dt)
    np.testing.assert_allclose(_np(F), F_oracle, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(_np(Q), Q_oracle, rtol=1e-11, atol=1e-15)
    assert np.array_equal(_np(Q), _np(Q).T)  # exact: Q is returned as 0.5 (Q + Q^T)
    assert np.all(np.linalg.eigvalsh(_np(Q)) > 0)


def test_exact_integrated_random_walk_closed_form():
    # theta = theta_a = 0: F = [[1, dt], [0, 1]],
    # Q = sigma^2 [[dt, 0], [0, 0]] + sigma_a^2 [[dt^3/3, dt^2/2], [dt^2/2, dt]].
    sigma, sigma_a, dt = 0.7, 1.9, 0.6
    F, Q = dj.OUAccel(0.0, sigma, 0.0, sigma_a, discretisation="exact").transition(dt)
    Q_oracle = np.array(
        [
            [sigma**2 * dt + sigma_a**2 * dt**3 / 3.0, sigma_a**2 * dt**2 / 2.0],
            [sigma_a**2 * dt**2 / 2.0, sigma_a**2 * dt],
        ]
    )
    np.testing.assert_allclose(_np(F), [[1.0, dt], [0.0, 1.0]], rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(_np(Q), Q_oracle, rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    "dynamics",
    [dj.OU(0.8, 1.1, discretisation="exact"), dj.OUAccel(0.8, 1.1, 0.3, 0.6, "exact")],
    ids=["OU", "OUAccel"],
)
def test_exact_is_a_semigroup(dynamics):
    # Two exact steps of dt1, dt2 compose to one step of dt1 + dt2.
    dt1, dt2 = 0.3, 0.45
    F1, Q1 = (_np(a) for a in dynamics.transition(dt1))
    F2, Q2 = (_np(a) for a in dynamics.transition(dt2))
    F, Q = (_np(a) for a in dynamics.transition(dt1 + dt2))
    np.testing.assert_allclose(F2 @ F1, F, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(F2 @ Q1 @ F2.T + Q2, Q, rtol=1e-13, atol=1e-15)


# --- dt -> 0: euler and exact converge ------------------------------------------------------


def _one_step_error(theta, sigma, theta_a, sigma_a, dt, scalar):
    if scalar:
        e = dj.OU(theta, sigma).transition(dt)
        x = dj.OU(theta, sigma, discretisation="exact").transition(dt)
    else:
        e = dj.OUAccel(theta, sigma, theta_a, sigma_a).transition(dt)
        x = dj.OUAccel(theta, sigma, theta_a, sigma_a, "exact").transition(dt)
    dF = np.max(np.abs(_np(e[0]) - _np(x[0])))
    dQ = np.max(np.abs(_np(e[1]) - _np(x[1])))
    return dF, dQ


@pytest.mark.parametrize("scalar", [True, False], ids=["OU", "OUAccel"])
def test_euler_converges_to_exact_one_step_second_order(scalar):
    # Local error of both F and Q is O(dt^2): halving dt divides it by 4.
    dts = 0.1 * 0.5 ** np.arange(6)
    errs = np.array([_one_step_error(0.9, 1.2, 0.6, 0.8, dt, scalar) for dt in dts])
    dQ = errs[:, 1]
    orders_Q = np.log2(dQ[:-1] / dQ[1:])
    np.testing.assert_allclose(orders_Q, 2.0, atol=0.1)
    # Leading term: Q_euler[0,0] - Q_exact[0,0] = sigma^2 theta dt^2 + O(dt^3).
    np.testing.assert_allclose(dQ[-1] / dts[-1] ** 2, 1.2**2 * 0.9, rtol=1e-2)
    if not scalar:  # the scalar euler F is exp(-theta dt), identical to the exact one
        dF = errs[:, 0]
        np.testing.assert_allclose(np.log2(dF[:-1] / dF[1:]), 2.0, atol=0.1)
    else:  # exact: one expression, exp(-theta dt), on the same inputs in one process
        np.testing.assert_array_equal(errs[:, 0], 0.0)


@pytest.mark.parametrize("scalar", [True, False], ids=["OU", "OUAccel"])
def test_euler_converges_over_a_fixed_horizon_first_order(scalar):
    # Composing N euler steps over a 1 s horizon converges to the exact 1 s transition at
    # rate O(1/N) (global error of a one-step method of local order 2).
    horizon = 1.0
    if scalar:
        euler, exact = dj.OU(0.9, 1.2), dj.OU(0.9, 1.2, discretisation="exact")
    else:
        euler, exact = dj.OUAccel(0.9, 1.2, 0.6, 0.8), dj.OUAccel(0.9, 1.2, 0.6, 0.8, "exact")
    F_ex, Q_ex = (_np(a) for a in exact.transition(horizon))
    errs = []
    for N in (16, 32, 64, 128, 256):
        F1, Q1 = (_np(a) for a in euler.transition(horizon / N))
        F, Q = np.eye(F1.shape[0]), np.zeros_like(Q1)
        for _ in range(N):
            F, Q = F1 @ F, F1 @ Q @ F1.T + Q1
        errs.append(max(np.max(np.abs(F - F_ex)), np.max(np.abs(Q - Q_ex))))
    errs = np.array(errs)
    np.testing.assert_allclose(np.log2(errs[:-1] / errs[1:]), 1.0, atol=0.1)
    assert errs[-1] < 1e-2


# --- theta -> 0 ---------------------------------------------------------------------------


@pytest.mark.parametrize("discretisation", ["euler", "exact"])
def test_ou_theta_zero_is_a_random_walk_with_continuous_limit(discretisation):
    sigma, dt = 1.4, 0.7

    def FQ(theta):
        F, Q = dj.OU(theta, sigma, discretisation=discretisation).transition(dt)
        return jnp.stack([F[0, 0], Q[0, 0]])

    jac_fwd, jac_rev, FQ = jax.jit(jax.jacfwd(FQ)), jax.jit(jax.jacrev(FQ)), jax.jit(FQ)
    at0 = _np(FQ(0.0))
    np.testing.assert_allclose(at0, [1.0, sigma**2 * dt], rtol=1e-15, atol=0)
    for theta in (1e-9, 1e-6):
        # Continuous: the change is first order in theta (|dF/dtheta| = dt, |dQ/dtheta| <=
        # sigma^2 dt^2).
        np.testing.assert_allclose(_np(FQ(theta)), at0, rtol=0, atol=2.0 * sigma**2 * theta)

    jac0 = _np(jac_fwd(0.0))
    jac_rev0 = _np(jac_rev(0.0))
    assert np.all(np.isfinite(jac0)) and np.all(np.isfinite(jac_rev0))
    np.testing.assert_allclose(jac0, jac_rev0, rtol=1e-14, atol=0)
    dQ0 = 0.0 if discretisation == "euler" else -(sigma**2) * dt**2
    np.testing.assert_allclose(jac0, [-dt, dQ0], rtol=1e-12, atol=0)
    for theta in (1e-9, 1e-6):
        np.testing.assert_allclose(_np(jac_fwd(theta)), jac0, rtol=1e-5, atol=0)


@pytest.mark.parametrize("discretisation", ["euler", "exact"])
def test_ouaccel_theta_zero_limit_is_continuous(discretisation):
    sigma, sigma_a, dt = 0.9, 1.3, 0.5

    def FQ(thetas):
        F, Q = dj.OUAccel(thetas[0], sigma, thetas[1], sigma_a, discretisation).transition(dt)
        return jnp.concatenate([F.ravel(), Q.ravel()])

    jac = jax.jacrev(FQ)  # eager: compiling the derivative of expm costs more than it saves
    zero = jnp.zeros(2)
    at0 = _np(FQ(zero))
    assert np.all(np.isfinite(at0))
    jac0 = _np(jac(zero))
    assert np.all(np.isfinite(jac0))
    for eps in (1e-9, 1e-6):
        th = jnp.full(2, eps)
        np.testing.assert_allclose(_np(FQ(th)), at0, rtol=0, atol=10.0 * eps)
        np.testing.assert_allclose(_np(jac(th)), jac0, rtol=0, atol=1e-5)
    # F[0,0] is 1 - theta dt (euler) or exp(-theta dt) (exact): slope -dt at 0; the same
    # for F[1,1] and theta_a.
    np.testing.assert_allclose(jac0[0, 0], -dt, rtol=1e-12)
    np.testing.assert_allclose(jac0[3, 1], -dt, rtol=1e-12)


@pytest.mark.parametrize(
    "params", [(0.4, 0.9, 0.8, 0.6), (0.7, 1.1, 0.7, 0.5)], ids=["distinct", "theta=theta_a"]
)
def test_exact_extended_derivative_matches_finite_differences(params):
    # d(F, Q)/d(theta, sigma, theta_a, sigma_a) through expm + Van Loan.
    dt = 0.6

    def FQ(p):
        F, Q = dj.OUAccel(p[0], p[1], p[2], p[3], discretisation="exact").transition(dt)
        return jnp.concatenate([F.ravel(), Q.ravel()])

    x = np.array(params)
    jac = _np(jax.jacrev(FQ)(jnp.asarray(x)))
    h = 1e-6
    fd = np.stack([(_np(FQ(x + h * e)) - _np(FQ(x - h * e))) / (2 * h) for e in np.eye(4)], axis=1)
    np.testing.assert_allclose(jac, fd, rtol=1e-7, atol=1e-9)


def test_half_life():
    np.testing.assert_allclose(float(dj.OU(0.02, 1.0).half_life), np.log(2.0) / 0.02, rtol=1e-15)
    assert float(dj.OU(0.0, 1.0).half_life) == np.inf
    np.testing.assert_allclose(
        float(dj.OUAccel(0.5, 1.0, 0.1, 0.1).half_life), np.log(2.0) / 0.5, rtol=1e-15
    )


@pytest.mark.parametrize(
    "dynamics",
    [dj.OU(0.3, 0.9), dj.OU(0.3, 0.9, "exact"), dj.OUAccel(0.3, 0.9, 0.5, 0.4, "exact")],
    ids=["OU-euler", "OU-exact", "OUAccel-exact"],
)
def test_transition_vmaps_over_dt(dynamics):
    dts = jnp.array([0.01, 0.3, 1.7])
    Fs, Qs = jax.vmap(dynamics.transition)(dts)
    for i, d in enumerate(dts):
        F, Q = dynamics.transition(d)
        # Not bit for bit: vmap compiles another program (batched exp / expm), and nothing
        # specifies that it rounds like the unbatched one.
        np.testing.assert_allclose(_np(Fs[i]), _np(F), rtol=1e-15, atol=0)
        np.testing.assert_allclose(_np(Qs[i]), _np(Q), rtol=1e-15, atol=0)
