"""One module per job; each exposes ``build(engine)`` and holds only its widgets, request and result view."""
