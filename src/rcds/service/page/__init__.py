"""The status page: a snapshot of the service's state (:mod:`.snapshot`), rendered as one HTML page
(:mod:`.html`) with server-side SVG plots (:mod:`.svg`); no scripts, no external assets."""
