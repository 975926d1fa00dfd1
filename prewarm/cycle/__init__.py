"""The decision cycle every driver runs: ``step(inputs, state, config) -> (plan, state, report)``.

The daemon (:mod:`prewarm.daemon`), the simulator behind ``prewarm bench`` (:mod:`prewarm.sim`) and,
through what the cycle publishes, the KEDA scaler and ``prewarm explain`` all decide through
:func:`prewarm.cycle.step.step`. Pure: no I/O client is imported here (checked by import-linter).
"""
