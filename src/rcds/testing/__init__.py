"""Test support shipped with rcds: tarball builders and a corpus of hostile and good archives.

:mod:`rcds.testing.hostile_tars` holds the hostile corpus (``CASES``) and re-exports
:func:`~rcds.testing.good_tars.good_tarballs`; :mod:`rcds.testing.tarbuild` holds the
builders and listing helpers they share. Nothing here is used by the service at run time.
"""
