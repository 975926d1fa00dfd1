"""The GPU agent: a node service that pre-loads weights into disk, host-shared and GPU memory tiers.

Modules: :mod:`~gpu_agent.server` (gRPC service, auth, lifecycle), :mod:`~gpu_agent.agent`
(holdings, loading, admission, pressure eviction, leases), :mod:`~gpu_agent.sources` (URI policy,
fetch + sha256), :mod:`~gpu_agent.diskcache`, :mod:`~gpu_agent.copy_engine` (pinned, chunked,
multi-stream fills), :mod:`~gpu_agent.eviction` (the pure eviction rule), :mod:`~gpu_agent.nvml`,
:mod:`~gpu_agent.artifacts` (torch.compile caches), :mod:`~gpu_agent.client` (what inference
processes import to attach). The contract is ``protos/gpu_agent.proto``.

It does not import the forecaster or the ``prewarm`` application shell (checked by import-linter).
"""
