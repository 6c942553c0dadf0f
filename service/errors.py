"""One error tree. Policy lives on the class; HTTP mapping only at the API edge."""

from __future__ import annotations


class SegmentsError(Exception):
    """Base of every error this service raises on purpose."""

    code = "internal"
    retriable = False


class StopRequested(SegmentsError):
    """Shutdown began while an operation waited to retry; leave without committing."""

    code = "stopping"


class StoreUnavailable(SegmentsError):
    code = "store_unavailable"
    retriable = True


class WriteConflict(SegmentsError):
    """A segment write kept losing compare-and-set races."""

    code = "write_conflict"
    retriable = True


class NotFound(SegmentsError):
    code = "not_found"
