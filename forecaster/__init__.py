"""Per-model demand forecasting: history sources, forecasting models, model selection.

Numpy in, typed :class:`forecaster.types.Forecast` out. The models and selection code import no I/O
client (checked by import-linter); the sources in :mod:`forecaster.sources` do the I/O.
"""
