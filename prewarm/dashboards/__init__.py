"""The Grafana dashboards (:mod:`.grafana`) and their static HTML rendering (:mod:`.render`)."""
