"""Test support shipped with rcds: tarball builders, corpora of hostile and good archives, servers.

* :mod:`rcds.testing.hostile_tars`: ``CASES`` (every hostile case with its policy),
  ``write_corpus``, and re-exports of ``good_tarballs``;
* :mod:`rcds.testing.broken_tars`: the broken-archive and broken-compression cases;
* :mod:`rcds.testing.good_tars`: well-formed archives and the listing each must produce;
* :mod:`rcds.testing.tarbuild`: the builders, codecs and listing helpers they share;
* :mod:`rcds.testing.squid`, :mod:`rcds.testing.nginx`, :mod:`rcds.testing.seaweedfs`: real Squid,
  nginx and SeaweedFS servers on loopback;
* :mod:`rcds.testing.processes`: free ports, waiting for a child server, stopping it.

Nothing here is used by the service at run time.
"""
