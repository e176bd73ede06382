"""Test support shipped with rcds: tarball builders and corpora of hostile and good archives.

* :mod:`rcds.testing.hostile_tars`: ``CASES`` (every hostile case with its policy),
  ``write_corpus``, and re-exports of ``good_tarballs``;
* :mod:`rcds.testing.broken_tars`: the broken-archive and broken-compression cases;
* :mod:`rcds.testing.good_tars`: well-formed archives and the listing each must produce;
* :mod:`rcds.testing.tarbuild`: the builders, codecs and listing helpers they share.

Nothing here is used by the service at run time.
"""
