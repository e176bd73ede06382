"""Client configuration: CVMFS-style ``key=value`` files and the settings they make."""
