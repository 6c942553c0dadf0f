"""The one command line: ``segments <role>``. The same image runs every role."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from service.settings import get_settings


def _consume(_: argparse.Namespace) -> int:
    import uvloop

    from consumers.runner import run_consumer

    # uvloop: the consumer's loop runs thousands of socket reads and callbacks per second
    # (broker fetches, Redis pipelines, produce acks); the API runs on it too (uvicorn).
    uvloop.run(run_consumer(get_settings()))
    return 0


def _sweep(_: argparse.Namespace) -> int:
    import uvloop

    from consumers.sweeper import main as run_sweep

    uvloop.run(run_sweep(get_settings()))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from consumers.replay import ReplayOptions, run_replay

    if args.prefix is None and args.redis_url is None:
        print(
            "segments replay: give --prefix and/or --redis-url (where to rebuild)", file=sys.stderr
        )
        return 2
    options = ReplayOptions(
        prefix=args.prefix,
        redis_url=args.redis_url,
        force=args.force,
        changes_topic=args.changes_topic,
        verify=args.verify,
        verify_only=args.verify_only,
        live_lost=args.live_lost,
        rules_file=Path(args.rules) if args.rules else None,
        examples=args.examples,
    )
    return asyncio.run(run_replay(get_settings(), options))


def _add_replay_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    replay = sub.add_parser(
        "replay",
        help="rebuild the whole state from the events topic into a fresh prefix or Redis, "
        "then verify it against the live state",
    )
    replay.add_argument("--prefix", help="key prefix of the rebuilt state (e.g. r1:)")
    replay.add_argument(
        "--redis-url", help="Redis (or another DB of it) of the rebuilt state (default: live)"
    )
    replay.add_argument(
        "--force", action="store_true", help="delete what is under the target prefix first"
    )
    replay.add_argument(
        "--changes-topic", help="publish the rebuild's change events there (default: none)"
    )
    replay.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare the rebuilt state with the live one afterwards (default on)",
    )
    replay.add_argument(
        "--verify-only",
        action="store_true",
        help="do not rebuild: compare the state at --prefix/--redis-url with the live one",
    )
    replay.add_argument(
        "--live-lost",
        action="store_true",
        help="the live Redis is gone: read nothing from it (rules from --rules or the "
        "rules file), do not verify",
    )
    replay.add_argument("--rules", metavar="FILE", help="rebuild with these rules")
    replay.add_argument(
        "--examples", type=int, default=20, help="differences listed at most (default 20)"
    )
    replay.set_defaults(run=_replay)


def _topics(args: argparse.Namespace) -> int:
    from service.kafka import ensure_topics

    asyncio.run(ensure_topics(get_settings().kafka, partitions=args.partitions))
    return 0


def _rules_validate(args: argparse.Namespace) -> int:
    from service.segmentation.rules import RulesError, parse_rules

    try:
        rules = parse_rules(Path(args.file).read_text())
    except RulesError as exc:
        print(f"{args.file}: invalid rules", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem['path']}: {problem['message']}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid, version {rules.version}")
    return 0


def _rules_run(args: argparse.Namespace) -> int:
    from datetime import datetime

    from service import rules_cli

    settings = get_settings()
    command = args.rules_command
    if command == "diff":
        work = rules_cli.diff(settings, args.file, args.against, args.sample)
    elif command == "activate":
        work = rules_cli.activate(settings, args.file, args.by)
    elif command == "rollback":
        work = rules_cli.rollback(settings, args.version, args.by)
    elif command == "history":
        work = rules_cli.history(settings, args.limit)
    elif command == "reclassify":
        work = rules_cli.reclassify(settings)
    else:
        as_of = datetime.fromisoformat(args.as_of) if args.as_of else None
        work = rules_cli.suggest(
            settings, args.out, args.seed, args.sample, args.k, args.base, as_of
        )
    return asyncio.run(work)


def _add_rules_commands(rules: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    diff = rules.add_parser("diff", help="rule-level diff of a file against the active rules")
    diff.add_argument("file")
    diff.add_argument("--against", metavar="VERSION", help="a stored version instead")
    diff.add_argument(
        "--sample", action="store_true", help="also count who would move, on a sample"
    )
    activate = rules.add_parser("activate", help="validate, store and activate a rules file")
    activate.add_argument("file")
    activate.add_argument("--by", help="who (default cli:<user>)")
    rollback = rules.add_parser("rollback", help="make a stored version active again")
    rollback.add_argument("version")
    rollback.add_argument("--by", help="who (default cli:<user>)")
    history = rules.add_parser("history", help="activations and re-classification progress")
    history.add_argument("--limit", type=int, default=20)
    rules.add_parser(
        "reclassify", help="work on the re-classification after an activation until done"
    )
    suggest = rules.add_parser(
        "suggest", help="propose R/F/M and value thresholds from the data (and k-means clusters)"
    )
    suggest.add_argument("--out", help="write the rules file here (default: stdout)")
    suggest.add_argument("--seed", type=int, default=1)
    suggest.add_argument("--sample", type=int, default=100_000, help="customers sampled at most")
    suggest.add_argument("--k", type=int, default=5, help="k-means clusters")
    suggest.add_argument("--base", help="rules file to start from (default: the active rules)")
    suggest.add_argument("--as-of", help="RFC 3339 instant to measure at (default: now)")
    for name in ("diff", "activate", "rollback", "history", "reclassify", "suggest"):
        rules.choices[name].set_defaults(run=_rules_run)


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    asyncio.run(
        run_demo(get_settings(), rate=args.rate, customers=args.customers, duration_s=args.duration)
    )
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from service.logs import logging_config

    settings = get_settings()
    with _multiprocess_metrics(args.workers):
        uvicorn.run(
            "service.api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            log_level=settings.log_level.lower(),
            log_config=logging_config(settings.log_level),  # JSON lines from every worker
            access_log=False,
            # behind a load balancer a worker may be handed a long keep-alive connection
            timeout_keep_alive=30,
            # SIGTERM: stop accepting, let requests in flight finish for at most this long, exit;
            # keep it below the orchestrator's grace period (k8s terminationGracePeriodSeconds,
            # compose stop_grace_period)
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
            proxy_headers=args.proxy_headers,
            forwarded_allow_ips=args.forwarded_allow_ips,
        )
    return 0


@contextlib.contextmanager
def _multiprocess_metrics(workers: int) -> Iterator[None]:
    """With several workers, prometheus_client's multiprocess mode: every worker writes its
    samples under ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them. A directory given
    in the environment is emptied of stale samples; otherwise a temporary one is made (and
    removed at exit). Set before the workers start: the library reads it at import."""
    if workers <= 1:
        yield
        return
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield
        return
    with tempfile.TemporaryDirectory(prefix="segments-metrics-") as made:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segments", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("consume", help="run the event consumer").set_defaults(run=_consume)

    sub.add_parser(
        "sweep", help="re-classify customers whose segment changes with time (next_review_at)"
    ).set_defaults(run=_sweep)

    api = sub.add_parser("api", help="serve the HTTP API and dashboard")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (one per core)"
    )
    api.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=20,
        metavar="SECONDS",
        help="on SIGTERM, wait this long for requests in flight before closing (default 20)",
    )
    api.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips (default on)",
    )
    api.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        metavar="IPS",
        help="comma-separated proxy addresses (or '*') whose X-Forwarded-* headers are trusted",
    )
    api.set_defaults(run=_api)

    _add_replay_command(sub)

    topics = sub.add_parser("topics", help="create the Kafka topics if missing")
    topics.add_argument("--partitions", type=int, default=8)
    topics.set_defaults(run=_topics)

    rules = sub.add_parser("rules", help="work with rule files").add_subparsers(
        dest="rules_command", required=True
    )
    validate = rules.add_parser("validate", help="validate a rules file and print its version")
    validate.add_argument("file")
    validate.set_defaults(run=_rules_validate)
    _add_rules_commands(rules)

    demo = sub.add_parser("demo", help="produce synthetic customer traffic")
    demo.add_argument("--rate", type=float, default=200.0, help="events per second")
    demo.add_argument("--customers", type=int, default=5_000)
    demo.add_argument("--duration", type=float, default=None, help="seconds; forever if unset")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from service.logs import configure_logging

    try:
        settings = get_settings()
    except ValidationError as invalid:
        # Fail fast and say which variable is wrong (values are not echoed: they may be secret).
        print("segments: invalid configuration", file=sys.stderr)
        for error in invalid.errors():
            where = "SEGMENTS_" + "__".join(str(p).upper() for p in error["loc"])
            print(f"  {where}: {error['msg']}", file=sys.stderr)
        sys.exit(2)
    except SettingsError as unreadable:  # e.g. a JSON-valued variable that is not JSON
        print(f"segments: invalid configuration: {unreadable}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
