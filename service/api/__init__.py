"""The serving API: FastAPI app assembled in :mod:`service.api.app`, thin routers in ``routes/``.

Stateless: every answer is read from the Redis state the consumer writes, and a customer is
classified afresh on every read (never a stale segment).
"""
