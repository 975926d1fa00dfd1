"""A trace-driven simulator of a GPU cluster serving many models, and the policies it compares.

:mod:`prewarm.sim.cluster` describes the cluster and what a cold start costs,
:mod:`prewarm.sim.engine` replays a trace against one policy, :mod:`prewarm.sim.policies`
holds the policies (reactive, keep-alive, hybrid-histogram, Tyche, prewarm, oracle),
:mod:`prewarm.sim.cycle_io` is the simulated cluster behind the decision cycle's protocols (so the
``prewarm`` policy runs the daemon's own :func:`prewarm.cycle.step.step`),
:mod:`prewarm.sim.bench` runs them side by side for ``prewarm bench`` and
:mod:`prewarm.sim.matched` compares prewarm with a baseline at the same idle GPU memory.
"""
