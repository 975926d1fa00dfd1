"""Typed identifiers, so that a node name can never be passed where a model id is expected."""

from typing import NewType

ModelId = NewType("ModelId", str)
"""A model (series) id: the model label in Prometheus, the ``model`` column of a trace."""

NodeName = NewType("NodeName", str)
"""A Kubernetes node name."""

PoolName = NewType("PoolName", str)
"""A node pool name (the value of the pool label in the node selector)."""

GpuUuid = NewType("GpuUuid", str)
"""A GPU's UUID as NVML reports it (``GPU-...``)."""

RequestId = NewType("RequestId", str)
"""The id of a manual warm request made through the control API."""
