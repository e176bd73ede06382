"""Our own FUSE front end: the kernel protocol spoken directly on ``/dev/fuse``.

:mod:`~rcds.mount.fuse.protocol` (the ABI's layouts), :mod:`~rcds.mount.fuse.session` (INIT,
reader threads, dispatch, replies), :mod:`~rcds.mount.fuse.mounting` (``mount(2)`` or
``fusermount3``), :mod:`~rcds.mount.fuse.notify` (cache invalidations).
"""
