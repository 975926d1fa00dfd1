"""Forecasting models: pure numpy / statsmodels / scikit-learn, no I/O (checked by import-linter).

Point models here are vectorised across series: each takes a :class:`HistoryView` and an as-of end
step and returns point forecasts ``(models, horizon)``; uncertainty comes from
:mod:`forecaster.models.conformal`. Per-series parametric baselines (Holt-Winters / ETS) live in
:mod:`forecaster.models.holt_winters`.
"""
