"""What the bench starts and watches besides the load: the service it runs with --serve, the
memory of the service's processes, the database's own counters, and the pgbench baseline."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx


class BenchError(Exception):
    """A condition the bench cannot work around; its message says what to do."""


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "marketplace_pay.entrypoints.cli", *args]


async def wait_ready(url: str, *, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise BenchError(f"the service exited with status {process.returncode} while starting")
            try:
                r = await client.get(f"{url}/health/ready")
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2)
    raise BenchError(f"the service at {url} is not ready after {timeout_s:.0f} s (last answer: {last})")


class ServeProcess:
    """`marketplace-pay serve` as a child, with the caller's environment."""

    def __init__(self, *, scenario: str, workers: int | None, env: dict[str, str]) -> None:
        self.port = free_port()
        self.scenario = scenario
        self.workers = workers
        self.env = env | {"MP_PSP_SCENARIO": scenario}
        fd, path = tempfile.mkstemp(prefix="marketplace-pay-bench-serve-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 90) -> None:
        args = ["serve", "--port", str(self.port)]
        if self.workers is not None:
            args += ["--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(_cli(*args), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            await wait_ready(self.url, timeout_s=timeout_s, process=self.proc)
        except BenchError as exc:
            raise BenchError(f"{exc}; its log, {self.log_path}, ends with:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, and the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                say(f"the service did not exit within {timeout_s:.0f} s of SIGTERM and was killed")
                return None
        self.exit_code = self.proc.returncode
        return self.exit_code


# --- memory -----------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields follow the last ')'
        ppid = int(stat[stat.rindex(b")") + 2 :].split(None, 2)[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(roots: list[int]) -> list[int]:
    children = _children_map()
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children.get(pid, []))
    return seen


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used so far."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ProcessTreeSampler:
    """Peak of the summed RSS of a process tree (the service and its workers), and its CPU time."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peak_bytes = 0
        self.processes_max = 0

    def sample(self) -> None:
        pids = [p for p in process_tree(self.roots) if os.path.exists(f"/proc/{p}")]
        if not pids:
            return
        self.peak_bytes = max(self.peak_bytes, sum(rss_bytes(p) for p in pids))
        self.processes_max = max(self.processes_max, len(pids))

    def cpu_s(self) -> float:
        """CPU time of the tree's live processes (a worker that exited takes its share along)."""
        return sum(cpu_seconds(p) for p in process_tree(self.roots))


def listening_pids(port: int) -> list[int]:
    """Best effort, for --url on this host: the topmost processes holding a socket listening on
    `port` (found through /proc/net/tcp* and the processes' file descriptors)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    if not inodes:
        return []
    wanted = {f"socket:[{i}]" for i in inodes}
    holders: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in wanted:
                    holders.add(int(entry.name))
                    break
        except OSError:
            continue
    children = _children_map()
    parent = {c: p for p, cs in children.items() for c in cs}
    return sorted(h for h in holders if parent.get(h) not in holders)


def is_local(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname()):
        return True
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False


# --- the database's own counters --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DbCounters:
    rows_written: int  # n_tup_ins + n_tup_upd + n_tup_del over the database's tables
    wal_lsn: str


async def db_counters(conn: asyncpg.Connection) -> DbCounters:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        """SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint AS rows_written,
                  pg_current_wal_lsn()::text AS lsn
           FROM pg_stat_user_tables"""
    )
    return DbCounters(int(row["rows_written"]), row["lsn"])


async def wal_bytes_between(conn: asyncpg.Connection, start: str, end: str) -> int:
    return int(await conn.fetchval("SELECT pg_wal_lsn_diff($2::text::pg_lsn, $1::text::pg_lsn)::bigint", start, end))


async def db_clock_offset_s(conn: asyncpg.Connection, probes: int = 7) -> float:
    """The database clock minus this host's, from the probe with the shortest round trip."""
    best: tuple[float, float] | None = None
    for _ in range(probes):
        before = time.time()
        db_now = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
        after = time.time()
        candidate = (after - before, db_now - (before + after) / 2)
        if best is None or candidate[0] < best[0]:
            best = candidate
    assert best is not None
    return best[1]


# --- pgbench ----------------------------------------------------------------------------------


def find_pgbench() -> str | None:
    """On PATH, else next to the server binaries (pg_config --bindir), else the embedded
    server's (pgserver ships one)."""
    found = shutil.which("pgbench")
    if found:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if bindir and os.access(Path(bindir) / "pgbench", os.X_OK):
                return str(Path(bindir) / "pgbench")
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        from pgserver._commands import POSTGRES_BIN_PATH

        candidate = Path(POSTGRES_BIN_PATH) / "pgbench"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    return None


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise BenchError("the database URL must be a postgresql:// URL for the pgbench baseline")
    return urlunsplit(parts._replace(path=f"/{name}"))


_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


def parse_tps(output: str) -> float | None:
    """pgbench's `tps = N (without initial connection time)` line (older versions print two
    tps lines; the first is the one including connection time, the second excludes it)."""
    values = [float(v) for v in _TPS.findall(output)]
    return values[-1] if values else None


async def pgbench_baseline(dsn: str, *, seconds: int = 15, scale: int = 10) -> float:
    """`pgbench -N -c 8 -j 2` on a scratch database of the same server: created, initialized
    (scale 10), run, dropped — what this server does with durable commits from eight clients,
    the figure the service's throughput is compared with. Returns transactions/s; raises
    BenchError with pgbench's own words."""
    pgbench = find_pgbench()
    if pgbench is None:
        raise BenchError("pgbench not found (PATH, pg_config --bindir, pgserver): no baseline, the ratios stay null")
    name = f"mp_bench_pgbench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        target = with_database(dsn, name)
        try:
            say(f"baseline: pgbench -i -s {scale} on scratch database {name} ...")
            await _run(pgbench, "-i", "-q", "-s", str(scale), target, timeout_s=600)
            say(f"baseline: pgbench -N -c 8 -j 2 -T {seconds} ...")
            out = await _run(pgbench, "-N", "-c", "8", "-j", "2", "-T", str(seconds), target, timeout_s=seconds + 120)
        finally:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await admin.close()
    tps = parse_tps(out)
    if tps is None:
        raise BenchError(f"pgbench printed no tps line:\n{out[-1500:]}")
    return tps


async def _run(*argv: str, timeout_s: float) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{Path(argv[0]).name} {argv[1]} did not finish within {timeout_s:.0f} s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"{Path(argv[0]).name} {' '.join(argv[1:-1])} failed ({proc.returncode}):\n{text[-1500:]}")
    return text


async def reconcile(env: dict[str, str], timeout_s: float = 300) -> tuple[bool, str]:
    """`marketplace-pay reconcile --json` with the service's environment: (exit 0, its output)."""
    proc = await asyncio.create_subprocess_exec(
        *_cli("reconcile", "--json"), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"reconcile did not finish within {timeout_s:.0f} s"
    return proc.returncode == 0, (out.decode(errors="replace") + err.decode(errors="replace")).strip()
