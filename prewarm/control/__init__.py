"""The control API: manual warm requests, pins and pauses over gRPC, the KEDA external scaler, and
the client the CLI uses. See :mod:`prewarm.control.service` for the server the daemon runs.
"""
