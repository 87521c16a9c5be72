"""Stage 2's caption model (1-layer video encoder + 3-layer decoder) and its loss; see ``decoders.model``.
Its settings and its decoding are typed dataclasses in ``decoders.config``.

This top-level name is also taken on PyPI by an unrelated project, ``decoders``. Both install a
``decoders/`` folder into site-packages, so they cannot live in one environment; ``DISTRIBUTION``
marks this one, and ``caption`` refuses to start (with a message) when ``import decoders`` finds
the other.
"""

DISTRIBUTION = "vcap-toolkit"
