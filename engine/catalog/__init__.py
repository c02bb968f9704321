"""The SDNQ model catalog and the other data in ``presets/``: ``presets`` (the only reader of presets/*.json),
``service`` (the catalog rows with cache state and fit), ``check`` (``python -m engine catalog-check``)."""
