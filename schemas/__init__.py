"""Wire contracts only: incoming events (:mod:`schemas.events`), outgoing segment-change events
(:mod:`schemas.changes`) and their published JSON Schema files (``schemas/json/``, written by
``python -m schemas.generate``)."""
