"""Shared, dependency-free building blocks: typed ids, the error taxonomy, duration parsing.

This package is the bottom layer: it imports nothing else of prewarm's, and none of its modules
except ``common.grpc_status`` imports an I/O client.
"""
