"""Test harnesses that start real components (kube-apiserver, Prometheus) for the test suite."""
