"""Golden vectors: a model, its inputs step by step and what the filter outputs, as JSON.

The hand-off to the production implementation (docs in README "Golden vectors"). A file
holds everything needed to reproduce the numbers without drift_jax: the model as the
TOML config says it (``config_toml``, and the same as a JSON object under ``model``), the
inputs of every step (``z`` with ``null`` for a missing feature, ``dt`` in seconds) and the
outputs of the streaming estimator's interface after that step. Floats are written with
Python's ``repr`` (the shortest text that reads back to the same float64), so the file
round-trips exactly; ``tests/reference_imm.py`` is a plain-Python reading of the cycle that
reproduces a golden file to 1e-13.

Format (``format_version = 1``)::

    {
      "format": "drift_jax golden vectors", "format_version": 1,
      "description": "...", "created": "2026-12-01T12:00:00Z",
      "generated_by": {"drift_jax": "...", "jax": "...", "method": "..."},
      "dtype": "float64", "num_steps": T, "num_features": m,
      "regime_names": ["Quiet", "Trending", "Crisis"], "crisis_regime": "Crisis",
      "feature_names": [...] or null,
      "config_toml": "<the TOML text>", "model": {<the TOML as a JSON object>},
      "outputs": {"<key>": "<what it is>", ...},
      "steps": [
        {"t": 0.1, "dt": 0.1, "z": [1.5, null],
         "drift_rate_per_sec": ..., "drift_variance": ..., "regime_probabilities": [...],
         "p_crisis": ..., "is_crisis": false, "sigma_effective": ...,
         "log_likelihood_step": ..., "log_likelihood": ...},
        ...
      ]
    }
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path

import numpy as np

from .._core import validate as v
from .._models.model import check_model
from .._models.risk import RiskModel
from .config import config_to_toml

FORMAT = "drift_jax golden vectors"
FORMAT_VERSION = 1

#: What each per-step output is, written into every file.
OUTPUTS = {
    "drift_rate_per_sec": "E[mu_t | z_0..z_t], bps/s (IMM: the mixture sum_j w_j mu_j)",
    "drift_variance": "Var[mu_t | z_0..z_t], (bps/s)^2 (IMM: the mixture variance, "
    "spread between regimes included)",
    "regime_probabilities": "P(regime_t = j | z_0..z_t) in regime_names order "
    "(a Kalman model is one regime: [1.0])",
    "p_crisis": "regime_probabilities[crisis_regime] (a Kalman model: 0.0)",
    "is_crisis": "p_crisis > risk.threshold",
    "sigma_effective": "risk.sigma_base * (1 + risk.crisis_amplifier * p_crisis), bps/sqrt(s)",
    "log_likelihood_step": "log p(z_t | z_0..z_{t-1}); exactly 0.0 when nothing is observed",
    "log_likelihood": "running sum of log_likelihood_step over steps 0..t, added in order",
}

_CONVENTIONS = (
    "Start from the prior (init_probs, init_mean, init_cov) before step 0. Step t: (IMM) mix "
    "with the transition matrix, predict each regime over dt seconds with its own "
    "discretisation, update with z (null = that feature is missing; all null = a pure "
    "prediction), update the regime probabilities (Bayes), then report the outputs. The "
    "observation noise covariance is cov_cholesky @ cov_cholesky^T."
)


def golden_vectors(
    model,
    zs,
    dt,
    *,
    risk: RiskModel | None = None,
    times=None,
    feature_names=None,
    description: str = "",
    metadata: dict | None = None,
) -> dict:
    """Golden vectors of ``model`` on the inputs ``zs``, ``dt`` (a dict; see the module docs).

    Arguments:
        model: a ``dj.KalmanModel`` or ``dj.IMMModel`` (float64 for exact hand-off numbers).
        zs: features ``[T, m]`` (``[T]`` for one), NaN = missing.
        dt: step lengths in seconds, a scalar or ``[T]``.
        risk: the ``dj.RiskModel`` behind ``sigma_effective`` and ``is_crisis`` (default
            ``dj.RiskModel()``); written into the embedded config.
        times: optional ``[T]`` timestamps (seconds), written as each step's ``t``.
        feature_names: optional names of the ``m`` features (into the config).
        description: free text for the file's ``description``.
        metadata: the config's ``[metadata]`` table.

    Returns:
        The golden file's content as a dict (``dj.save_golden`` writes it).

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> imm = dj.seed_imm(dj.Observation.scalar(4.0))
        >>> g = dj.golden_vectors(imm, np.array([1.0, np.nan, -20.0]), 0.5)
        >>> g["steps"][1]["z"], g["steps"][1]["log_likelihood_step"]
        ([None], 0.0)
    """
    from .. import __version__
    from .._filters.filter import filter as run_filter

    check_model(model)
    risk = v.instance(
        "risk", RiskModel() if risk is None else risk, RiskModel, "a dj.RiskModel or None"
    )
    z = np.asarray(zs, dtype=np.float64)
    z = z[:, None] if z.ndim == 1 else z
    # The sequential filter, step by step as production runs it (method=None would run
    # a long series in chunks, equal only to rounding).
    res = run_filter(model, z, dt, method="sequential")
    T = z.shape[0]
    dts = np.broadcast_to(np.asarray(dt, dtype=np.float64), (T,))
    drift = np.asarray(res.drift, dtype=np.float64)
    var = np.asarray(res.drift_var, dtype=np.float64)
    ll_step = np.asarray(res.log_likelihoods, dtype=np.float64)
    # A Kalman model is the one-regime case: probabilities [1.0], no crisis regime.
    probs = np.asarray(res.regime_probs, dtype=np.float64)
    p_crisis = np.asarray(res.p_crisis, dtype=np.float64)
    names = list(model.regime_names)
    crisis = names[model.crisis_index] if model.crisis_index >= 0 else None
    sigma_base = float(risk.sigma_base)
    amplifier = float(risk.crisis_amplifier)
    running = 0.0
    steps = []
    t_out = None if times is None else np.asarray(times, dtype=np.float64)
    for k in range(T):
        running += float(ll_step[k])  # in order, as a streaming estimator adds them
        step = {
            "dt": float(dts[k]),
            "z": [None if math.isnan(x) else float(x) for x in z[k]],
            "drift_rate_per_sec": float(drift[k]),
            "drift_variance": float(var[k]),
            "regime_probabilities": [float(p) for p in probs[k]],
            "p_crisis": float(p_crisis[k]),
            "is_crisis": bool(p_crisis[k] > risk.threshold),
            "sigma_effective": sigma_base * (1.0 + amplifier * float(p_crisis[k])),
            "log_likelihood_step": float(ll_step[k]),
            "log_likelihood": running,
        }
        if t_out is not None:
            step = {"t": float(t_out[k]), **step}
        steps.append(step)
    text = config_to_toml(model, risk, feature_names=feature_names, metadata=metadata)
    import jax

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "description": description,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "generated_by": {
            "drift_jax": __version__,
            "jax": jax.__version__,
            "numpy": np.__version__,
            "method": "dj.filter (sequential); outputs equal dj.IMMDriftEstimator's",
        },
        "dtype": np.dtype(model.dtype).name,
        "num_steps": T,
        "num_features": int(z.shape[1]),
        "regime_names": names,
        "crisis_regime": crisis,
        "feature_names": None if feature_names is None else list(feature_names),
        "conventions": _CONVENTIONS,
        "outputs": OUTPUTS,
        "config_toml": text,
        "model": _toml_loads(text),
        "steps": steps,
    }


def save_golden(path: str | os.PathLike, golden: dict) -> Path:
    """Write a golden dict as JSON (floats by ``repr``, so they read back bit for bit).

    NaN or inf anywhere is an error (JSON has neither; a missing feature is ``null``)."""
    _check(golden, "`golden`")
    path = Path(path)
    try:
        # default=str: a TOML datetime under [metadata] is written as its ISO text. One
        # step per line, so a diff of two golden files reads step by step.
        head = json.dumps({**golden, "steps": []}, indent=1, allow_nan=False, default=str)
        lines = [json.dumps(s, allow_nan=False) for s in golden.get("steps", [])]
        body = "[\n  " + ",\n  ".join(lines) + "\n ]" if lines else "[]"
        text = head[: head.rindex('"steps": []')] + '"steps": ' + body + "\n}"
    except ValueError as err:
        raise ValueError(f"`golden` holds a NaN or inf, which JSON cannot: {err}") from None
    path.write_text(text + "\n", encoding="utf-8")
    return path


def load_golden(path: str | os.PathLike) -> dict:
    """Read a golden file written by ``dj.save_golden`` (checks its format and version)."""
    path = Path(path)
    try:
        golden = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON file: {err}") from None
    _check(golden, str(path))
    return golden


def _check(golden, label: str) -> None:
    if not isinstance(golden, dict) or golden.get("format") != FORMAT:
        raise ValueError(f"{label} is not a drift_jax golden file (no 'format': {FORMAT!r}).")
    if golden.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{label} has format_version {golden.get('format_version')!r}; this version of "
            f"drift_jax reads {FORMAT_VERSION}."
        )


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)
