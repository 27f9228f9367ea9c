"""Scripted scenarios with their truth, as ``dj.scenarios``.

Each scenario returns ``dj.Paths`` (true regimes, drift, drift slope, features, returns,
step lengths) for a closed-form drift script plus a quiet OU background:
``liquidation_cascade`` (fall, hold, recovery), ``reversal`` (a trend that turns),
``false_alarm`` (one huge feature outlier in a quiet market), ``slow_trend`` (a slow
ramp) and ``chop`` (frequent small reversals). Every shape parameter may be a number or a
``(low, high)`` range drawn per path, for Monte Carlo; ``randomised(name)`` gives default
ranges, ``simulator(name, ...)`` the chunkable form. See ``drift_jax/_simulation/scenarios.py``.

The default features every scenario observes (and the examples, notebooks and benchmarks
use): ``DEFAULT_FEATURE_NAMES``, ``default_loadings()``, ``default_feature_cov()`` and
``default_observation()`` (the ``dj.Observation`` of the two). ``cascade_profile`` is the
cascade's drift script in NumPy, for composing moves (notebook 02's reversal).
"""

from ._simulation.scenarios import (
    SCENARIOS as SCENARIOS,
    ScenarioSimulator as ScenarioSimulator,
    cascade_on_background as cascade_on_background,
    chop as chop,
    false_alarm as false_alarm,
    liquidation_cascade as liquidation_cascade,
    randomised as randomised,
    reversal as reversal,
    simulator as simulator,
    slow_trend as slow_trend,
)
from ._simulation.synthetic import (
    DEFAULT_FEATURE_NAMES as DEFAULT_FEATURE_NAMES,
    cascade_profile as cascade_profile,
    default_feature_cov as default_feature_cov,
    default_loadings as default_loadings,
    default_observation as default_observation,
)
