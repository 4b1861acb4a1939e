"""Real servers on loopback for offline demos, tests and benchmarks.

- :func:`range_http_server` serves a folder over HTTP with ``Range`` support (``rangehttpserver``), which
  GDAL's ``/vsicurl/`` needs to read COG windows without fetching whole files.
- :func:`stac_api_server` runs a real STAC API, stac-fastapi-pgstac (the server stack Planetary Computer
  runs) on a throwaway PostgreSQL + PostGIS cluster loaded with pypgstac, so STAC clients exercise bbox,
  datetime, ``query`` (``eo:cloud_cover``) and paging exactly as they would against a public API.

Nothing listens beyond 127.0.0.1 and everything is torn down when the context exits, even on errors.
The servers' packages are the ``servers`` extra (``pip install 'eo-jepa[servers]'``, part of ``dev``);
without them each server says which package is missing and how to install it.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eo_jepa.errors import MissingExtraError
from eo_jepa.utils.proc import die_with_parent, pid_alive, stop_process

log = logging.getLogger(__name__)

_INSTALL_HINT = "install PostgreSQL 15 + PostGIS 3 (`bash .ci/system-deps`, Debian packages postgresql-15 postgresql-15-postgis-3)"

# The modules each server imports (here or in its own process), with the PyPI package that provides them.
_RANGE_MODULES = {"RangeHTTPServer": "rangehttpserver"}
_STAC_API_MODULES = {
    "psycopg": "psycopg",
    "pypgstac": "pypgstac",
    "uvicorn": "uvicorn",
    "stac_fastapi.pgstac": "stac-fastapi-pgstac",
}


def _require(what: str, modules: Mapping[str, str]) -> None:
    """Raise :class:`MissingExtraError` naming the uninstalled packages of ``modules`` (module -> package)."""
    missing = [package for module, package in modules.items() if not _importable(module)]
    if missing:
        raise MissingExtraError(
            f"The {what} needs the package(s) {', '.join(missing)}, which are not installed; "
            "install the servers extra: pip install 'eo-jepa[servers]'."
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the module is blocked (None)
        return False


# --------------------------------------------------------------------------------------------------
# HTTP with Range requests
# --------------------------------------------------------------------------------------------------


def _range_handler(root: str) -> Any:
    from RangeHTTPServer import RangeRequestHandler

    class _QuietHandler(RangeRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug("range server: " + format, *args)

    return functools.partial(_QuietHandler, directory=root)


def _serve_range_forever(root: str, host: str, port: int) -> None:
    """Body of the server process: print the bound port on stdout, then serve until killed."""
    server = ThreadingHTTPServer((host, port), _range_handler(root))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


@contextlib.contextmanager
def range_http_server(
    root: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Serve ``root`` on loopback with HTTP Range support; yields the base URL (no trailing slash).

    The server runs in its own process, not a thread: rasterio holds the GIL inside some GDAL calls
    (sidecar-file probing during ``rasterio.open``), so a server thread in the reading process would
    deadlock against GDAL's ``/vsicurl/`` requests. Example::

        with range_http_server(scenes.cog_dir) as url:
            rasterio.open(f"{url}/<item id>/B04.tif").read(1, window=...)  # Range requests
    """
    _require("range HTTP server", _RANGE_MODULES)
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"Cannot serve {root}: it is not a folder.")
    code = "import sys; from eo_jepa.demo.servers import _serve_range_forever as s; s(sys.argv[1], sys.argv[2], int(sys.argv[3]))"
    with _server_process(
        [sys.executable, "-c", code, os.fspath(root), host, str(port)], f"range HTTP server for {root}"
    ) as bound:
        yield f"http://{host}:{bound}"


# --------------------------------------------------------------------------------------------------
# Misbehaving servers: the faults real networks have, for tests of bounded waits
# --------------------------------------------------------------------------------------------------

FAULTS = ("blackhole", "drip", "retry-after", "switch")


def _fault_handler(fault: str, options: Mapping[str, Any]) -> Any:
    from http.server import BaseHTTPRequestHandler

    from RangeHTTPServer import RangeRequestHandler

    root = options.get("root")
    flag = options.get("down_flag")

    class Handler(RangeRequestHandler if root else BaseHTTPRequestHandler):  # type: ignore[misc,valid-type]
        protocol_version = "HTTP/1.1"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if root:
                kwargs["directory"] = root
            super().__init__(*args, **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("fault server: " + format, *args)

        def _hang(self) -> None:
            time.sleep(3600)  # the client must give up on its own

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if fault == "blackhole":
                self._hang()
            elif fault == "drip":  # a valid answer, one byte every drip_s seconds
                body = b'{"type": "Catalog", "id": "x", "links": []}' + b" " * 100_000
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                for byte in head.encode() + body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(float(options.get("drip_s", 1.0)))
            elif fault == "retry-after":
                data = b'{"detail": "overloaded"}'
                self.send_response(int(options.get("status", 503)))
                self.send_header("Retry-After", str(options.get("retry_after", 3600)))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif flag and os.path.exists(flag):  # "switch", switched off: stops answering
                self._hang()
            elif self.command == "HEAD":
                super().do_HEAD()
            else:
                super().do_GET()

        do_GET = do_POST = do_HEAD = _any

    return Handler


def _serve_fault_forever(fault: str, options_json: str, host: str) -> None:
    server = ThreadingHTTPServer((host, 0), _fault_handler(fault, json.loads(options_json)))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


@contextlib.contextmanager
def fault_http_server(fault: str, *, host: str = "127.0.0.1", **options: Any) -> Iterator[str]:
    """A loopback HTTP server that misbehaves as real ones do; yields its base URL.

    ``fault``: ``"blackhole"`` accepts connections and never answers; ``"drip"`` sends a valid answer
    one byte every ``drip_s`` seconds; ``"retry-after"`` answers every request with ``status`` (503)
    and ``Retry-After: retry_after`` (3600); ``"switch"`` serves the folder ``root`` with Range
    support, but stops answering (accepts, then hangs) while the file ``down_flag`` exists, like a
    COG host that goes away mid-build and comes back. Runs in its own process (see
    :func:`range_http_server` for why), killed when the context exits or its parent dies.
    """
    if fault not in FAULTS:
        raise ValueError(f"Unknown fault {fault!r}; choose one of {', '.join(FAULTS)}.")
    _require(f"{fault} server", _RANGE_MODULES)
    if fault == "switch" and not options.get("root"):
        raise ValueError("The 'switch' fault server needs root= (the folder to serve).")
    options = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
    code = "import sys; from eo_jepa.demo.servers import _serve_fault_forever as s; s(*sys.argv[1:])"
    with _server_process(
        [sys.executable, "-c", code, fault, json.dumps(options), host], f"{fault} server"
    ) as port:
        yield f"http://{host}:{port}"


@contextlib.contextmanager
def _server_process(cmd: list[str], what: str) -> Iterator[int]:
    """Run a server process that prints its bound port first; yields the port, then stops it."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"The {what} failed to start (exit status {proc.poll()}).")
        yield int(line)
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------------------------------
# STAC API: stac-fastapi-pgstac on a throwaway PostgreSQL/PostGIS cluster
# --------------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_postgres_bindir() -> Path:
    """The folder holding ``initdb``/``pg_ctl``/``postgres`` of a PostgreSQL that has PostGIS installed.

    Looks at ``$EO_JEPA_PG_BINDIR``, then Debian's ``/usr/lib/postgresql/<version>/bin`` (newest first),
    then ``PATH``; prefers the first with PostGIS (CI images often ship a newer PostgreSQL without it).
    Raises a RuntimeError naming the missing binary or extension and how to install them.
    """
    candidates: list[Path] = []
    if env := os.environ.get("EO_JEPA_PG_BINDIR"):
        candidates.append(Path(env))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version_key(Path(p).parent.name))
    candidates += [Path(p) for p in reversed(versions)]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    complete = [f for f in candidates if all((f / b).is_file() for b in ("initdb", "pg_ctl", "postgres"))]
    if not complete:
        raise RuntimeError(
            f"PostgreSQL binary 'initdb' (also pg_ctl, postgres) was not found; {_INSTALL_HINT}."
        )
    for folder in complete:
        if _has_postgis(folder):
            return folder
    raise RuntimeError(
        f"The PostGIS extension (postgis.control) was not found for PostgreSQL in {complete[0]}; {_INSTALL_HINT}."
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def _has_postgis(bindir: Path) -> bool:
    shares = [Path("/usr/share/postgresql") / bindir.parent.name]
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--sharedir"], capture_output=True, text=True, timeout=30).stdout
            if out.strip():
                shares.insert(0, Path(out.strip()))
    return any((s / "extension" / "postgis.control").is_file() for s in shares)


_CLUSTER_PREFIX = "eo-jepa-pgstac-"


def _remove_stale_clusters(bindir: Path, as_root: bool) -> None:
    """Stop and delete clusters left behind by processes that were killed before they could clean up."""
    for folder in Path("/tmp").glob(_CLUSTER_PREFIX + "*"):
        try:
            owner = int((folder / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        if (folder / "data" / "postmaster.pid").exists():
            cmd = [os.fspath(bindir / "pg_ctl"), "-D", os.fspath(folder / "data"), "-m", "immediate", "stop"]
            if as_root:
                cmd = ["runuser", "-u", "postgres", "--", *cmd]
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(cmd, capture_output=True, timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed stale STAC API cluster %s (owner %d is gone)", folder, owner)


class _Cluster:
    """A throwaway PostgreSQL cluster in a fresh temp folder, listening on 127.0.0.1 only."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        # pytest's tmp dirs are mode 700 under /tmp/pytest-of-<user>: the postgres user could not enter them.
        _remove_stale_clusters(bindir, self.as_root)
        self.dir = Path(tempfile.mkdtemp(prefix=_CLUSTER_PREFIX, dir="/tmp"))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        os.chmod(self.dir, 0o755)
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.started = False

    def _run(self, *args: str | os.PathLike[str], timeout: float = 120) -> None:
        cmd = [os.fspath(a) for a in args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{Path(cmd[-1] if self.as_root else cmd[0]).name} failed: {proc.stderr.strip()[-2000:]}"
            )

    def start(self) -> None:
        self._run(
            self.bindir / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",
            "fsync": "off",  # throwaway data: durability is pointless, speed is not
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "40",
            "shared_buffers": "32MB",
            "logging_collector": "off",
        }
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(conf)
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.dir / "postgres.log",
            "-w",
            "-t",
            "60",
            "start",
        )
        self.started = True

    def stop(self) -> None:
        try:
            if self.started:
                with contextlib.suppress(Exception):
                    self._run(
                        self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", timeout=60
                    )
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/{dbname}"


def _load_pgstac(dsn: str, collection: Mapping[str, Any], items: Iterable[Mapping[str, Any]]) -> None:
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods
    from pypgstac.migrate import Migrate

    with PgstacDB(dsn=dsn) as db:
        Migrate(db).run_migration()
        loader = Loader(db=db)
        loader.load_collections(iter([dict(collection)]), insert_mode=Methods.upsert)
        loader.load_items(iter([dict(it) for it in items]), insert_mode=Methods.upsert)


def _as_json(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        return json.loads(Path(value).read_text())
    return value


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@contextlib.contextmanager
def stac_api_server(
    collection: Mapping[str, Any] | str | os.PathLike[str],
    items: Iterable[Mapping[str, Any]] | str | os.PathLike[str],
    *,
    startup_timeout: float = 90.0,
) -> Iterator[str]:
    """Run stac-fastapi-pgstac on loopback with ``collection`` and ``items`` loaded; yields its base URL.

    ``collection`` is a STAC Collection (dict or JSON file); ``items`` an iterable of item dicts or an
    ItemCollection/FeatureCollection JSON file. Needs PostgreSQL + PostGIS binaries (RuntimeError naming the
    missing piece otherwise). Runs as root too (the cluster runs as the ``postgres`` user).
    """
    _require("STAC API server", _STAC_API_MODULES)
    bindir = find_postgres_bindir()
    coll = _as_json(collection)
    loaded = _as_json(items)
    item_list = list(loaded["features"] if isinstance(loaded, Mapping) else loaded)
    cluster = _Cluster(bindir)
    api: subprocess.Popen[bytes] | None = None
    log_file = None
    try:
        t0 = time.perf_counter()
        cluster.start()
        import psycopg

        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE pgstac")
        with psycopg.connect(cluster.dsn("pgstac"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        _load_pgstac(cluster.dsn("pgstac"), coll, item_list)
        port = free_port()
        env = {
            **os.environ,
            "PGUSER": "postgres",
            "PGPASSWORD": "postgres",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(cluster.port),
            "PGDATABASE": "pgstac",
            "DB_MIN_CONN_SIZE": "1",
            "DB_MAX_CONN_SIZE": "4",
        }
        log_file = open(cluster.dir / "api.log", "wb")  # noqa: SIM115 - closed in finally
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=cluster.dir, preexec_fn=die_with_parent,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup_timeout
        while True:
            if api.poll() is not None:
                tail = (cluster.dir / "api.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"The STAC API (uvicorn) exited with status {api.returncode}: {tail}")
            with contextlib.suppress(OSError):
                if _get(url + "/") == 200 and _get(url + "/collections") == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"The STAC API did not answer on {url} within {startup_timeout:.0f} s.")
            time.sleep(0.1)
        log.info("STAC API on %s (%d items) ready in %.1f s", url, len(item_list), time.perf_counter() - t0)
        yield url
    finally:
        if api is not None:
            stop_process(api)
        if log_file is not None:
            log_file.close()
        cluster.stop()
