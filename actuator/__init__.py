"""The actuator: applies a WarmPlan to Kubernetes and the GPU agents, idempotently."""
