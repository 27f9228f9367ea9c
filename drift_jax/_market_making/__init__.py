"""The drift estimator in the quoting loop: a market-making harness (``dj.market_making``).

One concept per module: ``quotes`` (the GLFT and Avellaneda-Stoikov formulas),
``strategy`` (quoting rules and the order-flow model), ``signals`` (what a strategy quotes
from: an estimator, no signal, the true drift), ``loop`` (one path of quoting, fills and
accounting, sampled or in expectation), ``backtest`` (many paths, chunked and sharded),
``report`` (tables, files, plots) and ``objective`` (the smooth objective and its tuning).
"""
