"""Monte Carlo metrics of a drift estimator, as ``dj.metrics``.

Tracking error (overall and per true regime), calibration (coverage, NEES), the
log-likelihood per step, and event timing: crisis detection latency, tracking latency
after a regime switch, recovery after a crisis or a reversal, false alarms while quiet;
and the true regime chain's ``transition_counts``. Every function is pure ``jax.numpy`` on
paths with time as the last axis (``[..., T]``) and works under ``jit`` and ``vmap``;
``summarise_latencies`` is NumPy.
"""

from ._evaluation.event_metrics import (
    alarm_time_fraction as alarm_time_fraction,
    detection_latency as detection_latency,
    false_alarm_rate as false_alarm_rate,
    false_alarm_rate_per_hour as false_alarm_rate_per_hour,
    recovery_time as recovery_time,
    regime_onsets as regime_onsets,
    reversal_recovery_time as reversal_recovery_time,
    summarise_latencies as summarise_latencies,
    tracking_latency as tracking_latency,
)
from ._evaluation.metrics import (
    coverage as coverage,
    mean_log_likelihood as mean_log_likelihood,
    nees as nees,
    nees_state as nees_state,
    rmse as rmse,
    rmse_by_regime as rmse_by_regime,
    squared_error_sums as squared_error_sums,
    transition_counts as transition_counts,
)
