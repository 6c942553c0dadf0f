"""A real uvicorn server on a free port, in the test's event loop, for streaming tests."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Runs ``app`` (lifespan included) under uvicorn; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_level="warning",
        loop="asyncio",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def stop_processes(
    procs: list[subprocess.Popen[bytes]], log_dir: Path, logs: list[IO[bytes]], *, tail: int = 15
) -> None:
    """SIGTERM every process (they drain), SIGKILL what is still running after 20 s, close
    their ``logs``, then print the tail of each ``*.log`` in ``log_dir`` (shown when the test
    fails)."""
    try:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        for log in logs:
            log.close()
    for log_file in sorted(log_dir.glob("*.log")):
        lines = log_file.read_text(errors="replace").splitlines()[-tail:]
        print(f"--- {log_file.name} (tail)\n" + "\n".join(lines))
