"""One router per resource; each handler reads, calls a pure helper, returns a body."""
