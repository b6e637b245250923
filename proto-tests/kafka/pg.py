"""PostgreSQL for the Debezium scenarios: Debian's server (installed by
scripts/setup), started on 127.0.0.1 on a free port in a throwaway data
directory with `wal_level=logical`, stopped and removed afterwards.

PostgreSQL refuses to run as root, and tests run as root here and in CI, so
when we are root the server runs as the `postgres` user the Debian package
creates (`runuser -u postgres`); otherwise as ourselves. Clients connect
over TCP with `trust` authentication (loopback only) as the superuser
`postgres`, with the `psql` the package installs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bed import BedError, free_port, wait_for


def pg_bin() -> Path:
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                  key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
    for d in reversed(dirs):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    raise BedError("no PostgreSQL under /usr/lib/postgresql/*/bin: run scripts/setup "
                   "(it installs Debian's postgresql)")


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise BedError("running as root and there is no `postgres` user to run PostgreSQL "
                       "as: run scripts/setup (Debian's postgresql package creates it)") from exc
    return ["runuser", "-u", "postgres", "--", *argv]


@dataclass
class Postgres:
    dir: Path
    port: int
    bin: Path

    @classmethod
    def start(cls) -> "Postgres":
        bin_dir = pg_bin()
        base = Path(tempfile.mkdtemp(prefix="idemgate-pg."))
        data = base / "data"
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(base, pw.pw_uid, pw.pw_gid)
        port = free_port()
        pg = cls(dir=base, port=port, bin=bin_dir)
        out = subprocess.run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U",
                                              "postgres", "--auth=trust", "-E", "UTF8",
                                              "--no-sync"]),
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise BedError(f"initdb failed:\n{out.stdout}{out.stderr}")
        with open(data / "postgresql.conf", "a") as f:
            f.write(f"""
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{base}'
wal_level = logical
max_wal_senders = 4
max_replication_slots = 4
fsync = off
shared_buffers = 32MB
""")
        out = subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                                              str(base / "server.log"), "-w", "-t", "60",
                                              "start"]),
                             capture_output=True, text=True, timeout=90)
        if out.returncode != 0:
            log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
            raise BedError(f"pg_ctl start failed:\n{out.stdout}{out.stderr}\n{log[-3000:]}")
        wait_for("PostgreSQL to accept connections", lambda: pg.sql("SELECT 1").strip() == "1", 30)
        return pg

    def sql(self, text: str, db: str = "postgres") -> str:
        """Runs `text` with psql (stops at the first error); returns unaligned output."""
        psql = shutil.which("psql") or str(self.bin / "psql")
        out = subprocess.run([psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", db, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-c", text],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise BedError(f"psql failed: {out.stderr.strip()}\nSQL: {text[:500]}")
        return out.stdout

    def stop(self):
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_server_user([str(self.bin / "pg_ctl"), "-D", str(data), "-m",
                                            "fast", "-w", "-t", "60", "stop"]),
                           capture_output=True, timeout=90)
        shutil.rmtree(self.dir, ignore_errors=True)
