"""``prewarm demo``: the whole loop on a laptop, on a bundled real trace, without a cluster."""
