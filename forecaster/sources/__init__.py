"""History sources: where per-model request counts come from (Prometheus, trace files).

Every source returns a :class:`forecaster.types.SeriesBatch` of per-step request counts on a regular
grid. This package does the I/O; the models in :mod:`forecaster.models` never import it.
"""
