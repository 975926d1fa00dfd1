"""The daemon: one asyncio process that fetches history, observes the cluster, steps the decision
cycle (:mod:`prewarm.cycle`), applies the plan (when leader) and publishes what it decided."""
