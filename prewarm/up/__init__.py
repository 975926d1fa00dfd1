"""``prewarm up``: a local, real stack on one machine (Prometheus, kube-apiserver + etcd + kwok,
one GPU agent process per node, the daemon in active mode, a trace replayed as live traffic).

The process-starting parts (:mod:`prewarm.up.cluster`, :mod:`prewarm.up.prometheus`,
:mod:`prewarm.up.agents`) are also what the test harness (``tests/harness``) starts its real
components with, so ``prewarm up`` runs exactly what the tests run.
"""
