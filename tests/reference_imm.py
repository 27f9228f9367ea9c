"""A plain-Python reference of the drift filter cycle that drift_jax runs (standard library only).

Written to be read and ported (e.g. to Rust): no NumPy, no JAX, only ``math`` and lists.
It follows drift_jax's general IMM cycle (``drift_jax/_filters/imm.py: imm_step``, the cycle
``dj.IMMDriftEstimator`` runs) operation by operation; ``dj.filter`` runs the same maths in
another arrangement for a scalar state or several features (``_filters/imm_scalar.py``,
``_filters/reduction.py``). Both agree with this file to ~1e-14 relative to max(1, |value|) over a
few hundred steps (tests/test_reference_imm.py lists the measured differences): rounding
differences of an ulp per step, amplified a little where the regimes' means (~50 bps/s)
disagree and enter the mixture variance. Spec steps (1)-(5) are those of
``../shared/spec/drift-estimator-note.md``, "Each cycle"; where drift_jax's form differs
from the spec's (log space, Joseph form), this file takes drift_jax's, which is what the
1e-13 agreement needs, and says so.

Contract: ``run(model, steps) -> list[dict]``

- ``model``: the parsed TOML config, schema 1, i.e. ``tomllib.loads(dj.config_to_toml(model,
  risk))`` (README.md, "Config files"). ``kind`` is "imm" or "kalman". Keys a hand-written
  file may leave out get the library's defaults: ``discretisation`` "euler", ``update``
  "joint", ``init_probs`` uniform, ``init_mean`` 0, ``init_cov`` identity, ``crisis_regime``
  the regime named "Crisis" (else the last), ``[risk].threshold`` 0.3. ``cov_cholesky`` (the
  factor L the library's model holds) is used when present, ``R = L L^T``; otherwise ``cov``.
  Everything is computed in float64, whatever ``dtype`` says (a float32 model agrees only to
  float32 rounding).
- ``steps``: a list of ``{"z": [m floats], "dt": seconds}``; ``None`` or ``math.nan`` marks a
  missing feature, component by component. Step t predicts over ``dt_t`` (from the prior
  ``init_mean``, ``init_cov`` at t = 0), then updates with ``z_t``; for the IMM, mixing
  comes first.
- Returns one dict per step with exactly these keys:
  ``drift_rate_per_sec`` (mixture mean of mu, bps/s), ``drift_variance`` (mixture variance
  of mu, spread between the regimes included), ``regime_probabilities`` (M floats, in
  ``[[regimes]]`` order), ``p_crisis``, ``is_crisis`` (``p_crisis > threshold``),
  ``sigma_effective`` (``sigma_base * (1 + crisis_amplifier * p_crisis)``; None without a
  ``[risk]`` table), ``log_likelihood_step`` (``log p(z_t | z_<t)``, exactly 0.0 when nothing
  is observed) and ``log_likelihood`` (the running sum).
- ``kind = "kalman"``: the single model is run as a one-regime IMM (``Pi = [[1]]``, weight
  1), which is the Kalman filter exactly: mixing one Gaussian with weight 1 and normalising
  one weight are exact in floating point. ``regime_probabilities`` is ``[1.0]``, as
  ``KalmanResult.regime_probs`` gives. drift_jax defines no P(Crisis) for a ``KalmanModel``
  (neither ``KalmanResult`` nor ``dj.KalmanDriftEstimator`` has one): the single model is not
  a crisis regime, so ``p_crisis`` is 0.0, ``is_crisis`` False and ``sigma_effective`` is
  ``sigma_base`` (``dj.sigma_effective(sigma_base, 0.0, amp)``).
"""

from __future__ import annotations

import math

LOG_2PI = math.log(2.0 * math.pi)
# sqrt of the smallest normal float64: below it c^2 underflows (the library's threshold).
SQRT_TINY = math.sqrt(2.2250738585072014e-308)


# --- small dense linear algebra (row-major lists; sums in the library's order) ------------


def matmul(A, B):
    return [
        [sum(A[i][k] * B[k][j] for k in range(len(B))) for j in range(len(B[0]))]
        for i in range(len(A))
    ]


def matvec(A, x):
    return [sum(A[i][k] * x[k] for k in range(len(x))) for i in range(len(A))]


def transpose(A):
    return [list(row) for row in zip(*A, strict=True)]


def add(A, B):
    return [[a + b for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(A, B, strict=True)]


def symmetrise(A):
    return [[0.5 * (A[i][j] + A[j][i]) for j in range(len(A))] for i in range(len(A))]


def outer(a, b):
    return [[x * y for y in b] for x in a]


def sub(A, B):
    return [[a - b for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(A, B, strict=True)]


def identity(n):
    return [[float(i == j) for j in range(n)] for i in range(n)]


def cholesky(S):
    """Lower factor L of an SPD S, Cholesky-Banachiewicz (as ``_linalg.cholesky``)."""
    m = len(S)
    L = [[0.0] * m for _ in range(m)]
    for i in range(m):
        for j in range(i + 1):
            acc = S[i][j]
            for k in range(j):
                acc -= L[i][k] * L[j][k]
            L[i][j] = math.sqrt(acc) if i == j else acc / L[j][j]
    return L


def solve_lower(L, b):
    """Solve L x = b by forward substitution; b is a vector."""
    x = []
    for i in range(len(L)):
        acc = b[i]
        for k in range(i):
            acc -= L[i][k] * x[k]
        x.append(acc / L[i][i])
    return x


def solve_upper_transpose(L, b):
    """Solve L^T x = b by back substitution (L lower triangular)."""
    m = len(L)
    x = [0.0] * m
    for i in reversed(range(m)):
        acc = b[i]
        for k in range(i + 1, m):
            acc -= L[k][i] * x[k]
        x[i] = acc / L[i][i]
    return x


def expm(A):
    """exp(A) of a small matrix: scaling and squaring with a 24-term Taylor series.

    After scaling, ||A / 2^s||_1 <= 1, so the truncation error is below 1 / 25! ~ 6e-26.
    Each squaring doubles the relative rounding error, so s is kept as small as that allows.
    """
    n = len(A)
    norm = max(sum(abs(A[i][j]) for i in range(n)) for j in range(n))
    s = 0
    while norm > 1.0:
        norm, s = norm / 2.0, s + 1
    X = [[a * 2.0**-s for a in row] for row in A]
    E, term = identity(n), identity(n)
    for k in range(1, 25):
        term = [[t / k for t in row] for row in matmul(term, X)]
        E = add(E, term)
    for _ in range(s):
        E = matmul(E, E)
    return E


# --- the model ------------------------------------------------------------------------------


def expm1_ratio(x):
    """(1 - exp(-x)) / x with the library's Taylor branch near 0 (``_dynamics._expm1_ratio``)."""
    if abs(x) < 1e-3:
        return 1.0 - x / 2.0 + x * x / 6.0 - x * x * x / 24.0
    return -math.expm1(-x) / x


def transition(regime, dt, n):
    """Spec step (2)'s (F, Q) of one regime over dt seconds, embedded in a state of size n.

    A scalar OU member in an extended (n = 2) IMM becomes F = [[a, 0], [0, 0]],
    Q = diag(q, 0): its mu_dot is reset to 0 (``_dynamics.embedded_transition``).
    """
    theta, sigma = regime["theta"], regime["sigma"]
    exact = regime.get("discretisation", "euler") == "exact"
    if regime["dynamics"] == "OU":
        a = math.exp(-theta * dt)
        # euler (the spec's): Q = sigma^2 dt; exact: sigma^2 (1 - exp(-2 theta dt)) / (2 theta).
        q = sigma**2 * dt * expm1_ratio(2.0 * theta * dt) if exact else sigma**2 * dt
        F, Q = [[a]], [[q]]
        if n == 2:
            F, Q = [[a, 0.0], [0.0, 0.0]], [[q, 0.0], [0.0, 0.0]]
        return F, Q
    theta_a, sigma_a = regime["theta_accel"], regime["sigma_accel"]
    if not exact:  # spec upgrade 3
        F = [[1.0 - theta * dt, dt], [0.0, 1.0 - theta_a * dt]]
        return F, [[sigma**2 * dt, 0.0], [0.0, sigma_a**2 * dt]]
    # Van Loan (1978), as the library: for dx = A x dt + dW with cov(dW) = W dt,
    # expm([[-A, W], [0, A^T]] dt) = [[., F^-1 Q], [0, F^T]]. The corner F^-1 Q is linear
    # in W: W is divided by its scale w (multiplied back below) so that the number of
    # squarings in expm depends on A dt only (sigma^2 dt = 25 would cost 5 more, ~30 ulp).
    A = [[-theta, 1.0], [0.0, -theta_a]]
    w = max(sigma**2, sigma_a**2) or 1.0
    W = [[sigma**2 / w, 0.0], [0.0, sigma_a**2 / w]]
    minus_A = [[-a for a in row] for row in A]
    At = transpose(A)
    block = [minus_A[i] + W[i] for i in range(2)] + [[0.0, 0.0] + At[i] for i in range(2)]
    E = expm([[b * dt for b in row] for row in block])
    F = transpose([row[2:] for row in E[2:]])
    Q = matmul(F, [[w * e for e in row[2:]] for row in E[:2]])
    return F, symmetrise(Q)


def parse_model(model):
    """The config dict as plain numbers: regimes, Pi, prior, (H, R), update, risk."""
    kind = model["kind"]
    regimes = model["regimes"]
    M = len(regimes)
    n = 2 if any(r["dynamics"] == "OUAccel" for r in regimes) else 1
    obs = model["observation"]
    loadings = [float(a) for a in obs["loadings"]]
    m = len(loadings)
    if "cov_cholesky" in obs:  # the factor the library's model holds: R = L L^T, L lower
        L = obs["cov_cholesky"]
        R = [
            [sum(L[i][k] * L[j][k] for k in range(min(i, j) + 1)) for j in range(m)]
            for i in range(m)
        ]
    else:
        R = [[float(x) for x in row] for row in obs["cov"]]
    H = [[a] + [0.0] * (n - 1) for a in loadings]  # features observe mu, not mu_dot (upgrade 3)
    mean = model.get("init_mean", 0.0)
    mean = [float(mean)] * n if isinstance(mean, int | float) else [float(x) for x in mean]
    cov = model.get("init_cov", 1.0)
    if isinstance(cov, int | float):
        cov = [[float(cov) * (i == j) for j in range(n)] for i in range(n)]
    elif isinstance(cov[0], int | float):
        cov = [[float(cov[i]) * (i == j) for j in range(n)] for i in range(n)]
    if kind == "kalman":
        Pi, probs, crisis = [[1.0]], [1.0], None
    else:
        Pi = model["transition"]
        probs = model.get("init_probs", [1.0 / M] * M)
        names = [r.get("name", f"regime{k}") for k, r in enumerate(regimes)]
        crisis = model.get("crisis_regime", "Crisis" if "Crisis" in names else M - 1)
        crisis = names.index(crisis) if isinstance(crisis, str) else int(crisis)
    return {
        "regimes": regimes,
        "n": n,
        "Pi": Pi,
        "log_probs": [safe_log(p) for p in probs],
        "mean": mean,
        "cov": [[float(x) for x in row] for row in cov],
        "H": H,
        "R": R,
        "update": obs.get("update", "joint"),
        "crisis": crisis,
        "risk": model.get("risk"),
    }


def safe_log(x):
    return math.log(x) if x > 0 else -math.inf


# --- one cycle, spec steps (1)-(5) ----------------------------------------------------------


def mix(log_probs, means, covs, Pi):
    """Spec step (1): cbar_j = sum_i Pi_ij w_i and the moment-matched mixed prior of each j.

    Weights are carried as logs; they are exponentiated relative to the largest one (max 1),
    so nothing underflows. A regime with cbar_j <= SQRT_TINY (relative to that max: a zero
    probability, a structural zero in Pi) counts as unreachable: it keeps its own state
    (mixing weights e_j) instead of dividing by ~0; its log cbar_j stays exact (-inf for 0).
    """
    M, n = len(log_probs), len(means[0])
    top = max(log_probs)
    w = [math.exp(lp - top) for lp in log_probs]
    log_cbar, mixed_means, mixed_covs = [], [], []
    for j in range(M):
        c = sum(Pi[i][j] * w[i] for i in range(M))
        log_cbar.append(safe_log(c) + top)
        reachable = c > SQRT_TINY
        mu = [Pi[i][j] * w[i] / c if reachable else float(i == j) for i in range(M)]
        mean = [sum(mu[i] * means[i][r] for i in range(M)) for r in range(n)]
        cov = [[0.0] * n for _ in range(n)]
        for i in range(M):
            d = [means[i][r] - mean[r] for r in range(n)]
            term = add(covs[i], outer(d, d))
            cov = [[cov[r][s] + mu[i] * term[r][s] for s in range(n)] for r in range(n)]
        mixed_means.append(mean)
        mixed_covs.append(cov)
    return log_cbar, mixed_means, mixed_covs


def predict(mean, cov, F, Q):
    """Spec step (2): x- = F x, P- = F P F^T + Q (symmetrised).

    For the scalar euler OU this is the spec's P- = P exp(-2 theta dt) + sigma^2 dt.
    """
    return matvec(F, mean), symmetrise(add(matmul(matmul(F, cov), transpose(F)), Q))


def update_joint(mean, cov, z, H, R):
    """Spec step (3) with upgrade 2: one vector update with the full R on the observed
    components (missing ones dropped); returns log N(z_obs; H x-, S).

    The covariance is the Joseph form (I - KH) P (I - KH)^T + K R K^T, as the library: it
    equals the spec's (I - KH) P in exact arithmetic and stays positive definite in
    floating point. (drift_jax masks the missing rows instead of dropping them: unobserved
    rows of S become the identity; the terms that adds are exact zeros.)
    """
    seen = [k for k in range(len(z)) if not math.isnan(z[k])]
    if not seen:  # a pure prediction: the prior is the posterior, likelihood 1
        return mean, cov, 0.0
    n = len(mean)
    Hs = [H[k] for k in seen]
    Rs = [[R[k][q] for q in seen] for k in seen]
    innov = [z[k] - hz for k, hz in zip(seen, matvec(Hs, mean), strict=True)]
    PHt = matmul(cov, transpose(Hs))  # [n, k]
    L = cholesky(add(matmul(Hs, PHt), Rs))  # S = H P H^T + R = L L^T
    # K = P H^T S^-1: row r of K solves S x = (P H^T)[r] (S is symmetric).
    K = [solve_upper_transpose(L, solve_lower(L, row)) for row in PHt]
    new_mean = [x + kv for x, kv in zip(mean, matvec(K, innov), strict=True)]
    IKH = sub(identity(n), matmul(K, Hs))
    new_cov = add(matmul(matmul(IKH, cov), transpose(IKH)), matmul(matmul(K, Rs), transpose(K)))
    w = solve_lower(L, innov)
    logdet = 2.0 * sum(math.log(L[i][i]) for i in range(len(seen)))
    loglik = -0.5 * (len(seen) * LOG_2PI + logdet + sum(x * x for x in w))
    return new_mean, symmetrise(new_cov), loglik


def update_independent(mean, cov, z, H, R):
    """Spec step (3), the old production way: one scalar update per observed feature with
    R_kk, ignoring the correlations (spec upgrade 2's "BAD" example). Joseph form."""
    n = len(mean)
    loglik = 0.0
    for k in range(len(z)):
        if math.isnan(z[k]):
            continue
        h, r = H[k], R[k][k]
        Ph = matvec(cov, h)
        s = sum(a * b for a, b in zip(h, Ph, strict=True)) + r
        innov = z[k] - sum(a * b for a, b in zip(h, mean, strict=True))
        gain = [p / s for p in Ph]
        mean = [x + g * innov for x, g in zip(mean, gain, strict=True)]
        IKH = sub(identity(n), outer(gain, h))
        rgg = [[r * v for v in row] for row in outer(gain, gain)]
        cov = symmetrise(add(matmul(matmul(IKH, cov), transpose(IKH)), rgg))
        loglik += -0.5 * (LOG_2PI + math.log(s) + innov * innov / s)
    return mean, cov, loglik


def bayes(log_cbar, logls, anything_seen):
    """Spec step (4) in log space: w_j = cbar_j L_j / sum_k cbar_k L_k.

    Logs, because L_j of an outlier underflows to 0 in every regime (0 / 0 in the spec's
    linear form), and a zero cbar_j (log = -inf) then needs no special case.
    Normalised relative to the largest term (log-sum-exp): with an outlier the terms are
    ~-1e14, and subtracting the full log-sum would leave errors of an ulp of that. Returns
    the new log weights and log p(z_t | z_<t) (0.0 when nothing was observed).
    """
    joint = [lc + ll for lc, ll in zip(log_cbar, logls, strict=True)]
    top = max(joint)
    top = top if math.isfinite(top) else 0.0
    shifted = [a - top for a in joint]
    log_norm = math.log(sum(math.exp(a) for a in shifted))
    step_ll = top + log_norm if anything_seen else 0.0
    return [a - log_norm for a in shifted], step_ll


def combine(log_probs, means, covs):
    """Spec step (5): the mixture mean and covariance sum_j w_j (P_j + d_j d_j^T)."""
    w = [math.exp(lp) for lp in log_probs]
    n = len(means[0])
    mean = [sum(w[j] * means[j][r] for j in range(len(w))) for r in range(n)]
    cov = [[0.0] * n for _ in range(n)]
    for j in range(len(w)):
        d = [means[j][r] - mean[r] for r in range(n)]
        term = add(covs[j], outer(d, d))
        cov = [[cov[r][s] + w[j] * term[r][s] for s in range(n)] for r in range(n)]
    return w, mean, cov


def cycle(state, p, z, dt):
    """One filter cycle over dt with z: spec steps (1)-(4) on the state, in order."""
    log_probs, means, covs = state
    log_cbar, mixed_means, mixed_covs = mix(log_probs, means, covs, p["Pi"])
    update = update_joint if p["update"] == "joint" else update_independent
    new_means, new_covs, logls = [], [], []
    for j, regime in enumerate(p["regimes"]):
        F, Q = transition(regime, dt, p["n"])
        pm, pP = predict(mixed_means[j], mixed_covs[j], F, Q)
        mj, Pj, llj = update(pm, pP, z, p["H"], p["R"])
        new_means.append(mj)
        new_covs.append(Pj)
        logls.append(llj)
    anything = any(not math.isnan(x) for x in z)
    new_log_probs, step_ll = bayes(log_cbar, logls, anything)
    return (new_log_probs, new_means, new_covs), step_ll


def run(model: dict, steps: list[dict]) -> list[dict]:
    """Filter ``steps`` with the config dict ``model``; see the module docstring."""
    p = parse_model(model)
    M, m = len(p["regimes"]), len(p["H"])
    state = (p["log_probs"], [p["mean"]] * M, [p["cov"]] * M)
    risk = p["risk"]
    threshold = 0.3 if risk is None else risk.get("threshold", 0.3)
    total, out = 0.0, []
    for t, step in enumerate(steps):
        z = step["z"]
        z = [z] if isinstance(z, int | float) or z is None else z
        z = [math.nan if x is None else float(x) for x in z]
        dt = float(step["dt"])
        if len(z) != m or any(math.isinf(x) for x in z) or not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"step {t}: need {m} finite-or-missing features and dt > 0: {step}")
        state, step_ll = cycle(state, p, z, dt)
        total += step_ll
        w, mean, cov = combine(*state)
        # The spec's is_crisis reads weights[2]; drift_jax reads the `crisis_regime` one.
        p_crisis = 0.0 if p["crisis"] is None else w[p["crisis"]]
        sigma_eff = None
        if risk is not None:
            sigma_eff = risk["sigma_base"] * (1.0 + risk["crisis_amplifier"] * p_crisis)
        out.append(
            {
                "drift_rate_per_sec": mean[0],
                "drift_variance": cov[0][0],
                "regime_probabilities": w,
                "p_crisis": p_crisis,
                "is_crisis": p_crisis > threshold,
                "sigma_effective": sigma_eff,
                "log_likelihood_step": step_ll,
                "log_likelihood": total,
            }
        )
    return out
