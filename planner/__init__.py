"""The planner: a pure function from forecasts, observed state and the model catalog to a WarmPlan.

It imports no I/O client (checked by import-linter) and never reads the clock: "now" is a field of
its input.
"""
