"""The GPU agent: a node service that pre-loads weights into disk, host-shared and GPU memory tiers.

It does not import the forecaster (checked by import-linter).
"""
