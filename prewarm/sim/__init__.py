"""A trace-driven simulator of a GPU cluster serving many models, and the policies it compares.

:mod:`prewarm.sim.cluster` describes the cluster and what a cold start costs,
:mod:`prewarm.sim.engine` replays a trace against one policy, :mod:`prewarm.sim.policies`
holds the policies (reactive, keep-alive, hybrid-histogram, Tyche, prewarm, oracle) and
:mod:`prewarm.sim.bench` runs them side by side for ``prewarm bench``.
"""
