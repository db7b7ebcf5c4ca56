"""The playground: ``python sample.py mode=serve`` serves a local web page to sample from, score
with and look inside a checkpoint (``server`` starts it, ``app`` answers the page, ``jobs`` and
``analysis`` compute what it shows, ``catalogue`` finds and loads the checkpoints, ``page/`` is
the page itself)."""
