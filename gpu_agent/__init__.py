"""The GPU agent: a node service that pre-loads weights into disk, host-shared and GPU memory tiers.

Modules: :mod:`~gpu_agent.server` (gRPC service, auth, lifecycle), :mod:`~gpu_agent.agent` (the
coordinator behind the API), :mod:`~gpu_agent.specs` (what a Preload asks for, and its checks),
:mod:`~gpu_agent.loader` (one load up the tiers, cleanup on failure), :mod:`~gpu_agent.fetch`
(weights into the disk tier, compiled artifacts), :mod:`~gpu_agent.checkpoints` (pickle
conversion), :mod:`~gpu_agent.host_tier` (shared memory, page-locking), :mod:`~gpu_agent.gpu_tier`
(GPU choice, allocation, fills), :mod:`~gpu_agent.holdings` (the registry),
:mod:`~gpu_agent.reclaim` (admission, eviction, pressure), :mod:`~gpu_agent.leases` (Attach and
Release), :mod:`~gpu_agent.events`, :mod:`~gpu_agent.status`, :mod:`~gpu_agent.progress`,
:mod:`~gpu_agent.sources` (URI policy, fetch + sha256), :mod:`~gpu_agent.diskcache`,
:mod:`~gpu_agent.copy_engine` (pinned, chunked, multi-stream fills), :mod:`~gpu_agent.eviction`
(the pure eviction rule), :mod:`~gpu_agent.nvml`, :mod:`~gpu_agent.artifacts` (torch.compile
caches), :mod:`~gpu_agent.client` (what inference processes import to attach). The contract is
``protos/gpu_agent.proto``; its ``Tier`` maps to :class:`common.tiers.Tier` in :mod:`protos.tiers`.

It does not import the forecaster or the ``prewarm`` application shell (checked by import-linter).
"""
