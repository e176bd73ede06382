"""Prometheus metrics shared by the service, ``rcds replica run`` and the mount daemon.

* :mod:`.definitions` creates the metric families of each role on a registry (HTTP requests,
  publishes and cleanups, cache hits/misses/evictions, failovers) and a collector for gauges
  read at scrape time (queue length, revision per repository);
* :mod:`.exposition` renders a registry in the Prometheus text format and serves ``/metrics``
  from a small thread for processes without a web application of their own.

``prometheus_client`` is imported here only: the client's import path (``rcds get``, the mount)
never imports this package at module level, so its start-up cost stays as it is.
"""
