"""A repository revision as a tree of paths: resolving, listing, ``stat`` values and open files."""
