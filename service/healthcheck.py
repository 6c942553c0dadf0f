"""The container's ``HEALTHCHECK``: ``python -m service.healthcheck``.

One image runs every role, so the check first finds which role this container runs (the
``segments`` process's arguments, read from ``/proc``) and then asks that role's liveness
endpoint: the API's ``/healthz`` on its ``--port``, or ``/healthz`` of the probes server of
``consume`` and ``sweep`` (``SEGMENTS_PROBES__PORT``). Roles with nothing to probe (``topics``,
``rules``, ``demo``) are healthy while they run. Exit 0 healthy, 1 unhealthy.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from service.cli import build_parser
from service.settings import Settings, get_settings

HEALTH_PATH = "/healthz"
"""Liveness path of the API and of the probes server alike."""
PROBED_ROLES = frozenset({"consume", "sweep"})
"""Roles that serve the probes server (``service.probes``)."""
_TIMEOUT_S = 2.0
_PROGRAM = "segments"


def health_url(argv: Sequence[str], settings: Settings) -> str | None:
    """The liveness URL of the role ``segments argv`` runs; None when it has none."""
    args, _ = build_parser().parse_known_args(list(argv))
    if args.command == "api":
        return f"http://127.0.0.1:{args.port}{HEALTH_PATH}"
    if args.command in PROBED_ROLES and settings.probes.port:
        return f"http://127.0.0.1:{settings.probes.port}{HEALTH_PATH}"
    return None


def segments_argv(cmdlines: Iterator[list[str]]) -> list[str] | None:
    """The arguments after the ``segments`` program in the first command line that runs it
    (``/opt/venv/bin/python /opt/venv/bin/segments api --port 8000`` → ``api --port 8000``)."""
    for cmdline in cmdlines:
        for index, part in enumerate(cmdline):
            if Path(part).name == _PROGRAM:
                return cmdline[index + 1 :]
    return None


def _proc_cmdlines(proc: Path = Path("/proc")) -> Iterator[list[str]]:
    """Command lines of the processes, PID 1 (the image's entrypoint) first."""
    pids = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    for pid in pids:
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if raw:
            yield raw.rstrip(b"\0").decode(errors="replace").split("\0")


def check(argv: Sequence[str], settings: Settings) -> int:
    """0 when the role ``segments argv`` answers its liveness URL with 200 (or has none)."""
    url = health_url(argv, settings)
    if url is None:
        return 0
    try:
        # a URL we built: http on the loopback interface
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as answer:  # noqa: S310
            return 0 if answer.status == 200 else 1
    except OSError as failed:  # refused, timed out, or an HTTP error status
        print(f"healthcheck: {url}: {failed}", file=sys.stderr)  # noqa: T201
        return 1


def main() -> int:
    argv = segments_argv(_proc_cmdlines())
    if argv is None:
        print("healthcheck: no segments process found", file=sys.stderr)  # noqa: T201
        return 1
    return check(argv, get_settings())


if __name__ == "__main__":
    sys.exit(main())
