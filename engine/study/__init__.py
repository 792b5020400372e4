"""The model study (issue 14): how much of a model's edge is priced risk, and how fast it decays.

Pure array maths on what the backtests of many configurations produce; the ``nextick study``
command wires it up. ``risk`` splits each configuration's risk into the part the model's
uncertainty drives (across MC-dropout variants) and the priced rest; ``pml`` fits the Pretrained
Market Line (expected daily return on priced risk, through the risk-free rate), whose slope is the
model's Foundation Sharpe ratio; ``capm`` regresses a configuration on an equal-weighted market
with Newey-West errors; ``decay`` correlates the model's surprise with returns at lags; ``io``
writes and reads the ``nextick.study`` JSON file the HTML report renders.

statsmodels (the ``study`` extra) is needed by ``capm`` only; the rest needs numpy and msgspec.
"""
