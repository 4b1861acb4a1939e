"""Real loopback servers: Range HTTP for GDAL /vsicurl/, and a stac-fastapi-pgstac STAC API."""

from __future__ import annotations

import os
import sys
import urllib.request
from datetime import datetime

import numpy as np
import pystac_client
import pytest
import rasterio
from rasterio.windows import Window
from shapely.geometry import box, shape

from eo_jepa.demo import servers
from eo_jepa.demo.scenes import make_demo_scenes
from eo_jepa.demo.servers import range_http_server, stac_api_server
from eo_jepa.errors import MissingExtraError


def _first_href(scenes, key="B04"):
    return scenes.items()[0]["assets"][key]["href"]


def test_range_requests_return_partial_content(demo_scenes_tiny, cog_http_url):
    path = _first_href(demo_scenes_tiny)
    rel = os.path.relpath(path, demo_scenes_tiny.cog_dir)
    with open(path, "rb") as fh:
        data = fh.read()
    req = urllib.request.Request(f"{cog_http_url}/{rel}", headers={"Range": "bytes=100-1123"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 100-1123/{len(data)}"
        assert resp.read() == data[100:1124]
    with urllib.request.urlopen(f"{cog_http_url}/{rel}", timeout=10) as resp:
        assert resp.status == 200 and resp.read() == data


def test_vsicurl_window_equals_local_read(demo_scenes_tiny, cog_http_url):
    items_http = demo_scenes_tiny.items(cog_http_url)
    for local, remote in zip(demo_scenes_tiny.items(), items_http, strict=True):
        for key, window in (
            ("B04", Window(37, 101, 64, 64)),
            ("B11", Window(5, 9, 32, 40)),
            ("SCL", Window(0, 0, 192, 1)),
        ):
            assert remote["assets"][key]["href"].startswith("http://127.0.0.1:")
            with (
                rasterio.open(local["assets"][key]["href"]) as a,
                rasterio.open(remote["assets"][key]["href"]) as b,
            ):
                np.testing.assert_array_equal(a.read(1, window=window), b.read(1, window=window))
                assert a.transform == b.transform and a.crs == b.crs


@pytest.mark.parametrize(
    ("blocked", "server"),
    [
        ("RangeHTTPServer", lambda tmp: range_http_server(tmp)),
        ("RangeHTTPServer", lambda tmp: servers.fault_http_server("blackhole")),
        ("uvicorn", lambda tmp: stac_api_server({}, [])),
        ("stac_fastapi", lambda tmp: stac_api_server({}, [])),
    ],
)
def test_servers_name_the_extra_when_a_package_is_missing(monkeypatch, tmp_path, blocked, server):
    """The servers' packages are an extra (they ship in the wheel without them): a missing one is named."""
    monkeypatch.setitem(sys.modules, blocked, None)  # what Python sees when the package is not installed
    package = {
        "RangeHTTPServer": "rangehttpserver",
        "uvicorn": "uvicorn",
        "stac_fastapi": "stac-fastapi-pgstac",
    }
    expected = rf"needs the package\(s\) {package[blocked]}, which are not installed; .* pip install 'eo-jepa\[servers\]'\.$"
    with pytest.raises(MissingExtraError, match=expected), server(tmp_path):
        pass


def test_range_server_rejects_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"), range_http_server(tmp_path / "nope"):
        pass


def _python_filter(items, *, bbox=None, start=None, end=None, max_cloud=None):
    out = []
    for it in items:
        p = it["properties"]
        dt = datetime.fromisoformat(p["datetime"].replace("Z", "+00:00"))
        if bbox is not None and not shape(it["geometry"]).intersects(box(*bbox)):
            continue
        if start is not None and dt < start:
            continue
        if end is not None and dt > end:
            continue
        if max_cloud is not None and not p["eo:cloud_cover"] < max_cloud:
            continue
        out.append(it["id"])
    return sorted(out)


def _ids(search):
    return sorted(i.id for i in search.items())


def test_stac_api_answers_queries_like_a_direct_filter(demo_scenes_tiny, stac_api_url, cog_http_url):
    items = demo_scenes_tiny.items()
    client = pystac_client.Client.open(stac_api_url)
    assert [c.id for c in client.get_collections()] == ["sentinel-2-l2a"]
    all_ids = _ids(client.search(collections=["sentinel-2-l2a"]))
    assert all_ids == sorted(it["id"] for it in items)

    inside = shape(items[0]["geometry"]).centroid
    near = (inside.x - 0.001, inside.y - 0.001, inside.x + 0.001, inside.y + 0.001)
    far = (2.0, 48.0, 2.1, 48.1)  # Paris: no scene there
    assert _ids(client.search(collections=["sentinel-2-l2a"], bbox=near)) == _python_filter(items, bbox=near)
    assert _ids(client.search(collections=["sentinel-2-l2a"], bbox=far)) == []

    start = datetime.fromisoformat("2022-01-01T00:00:00+00:00")
    got = _ids(client.search(collections=["sentinel-2-l2a"], datetime="2022-01-01/2023-12-31"))
    assert got == _python_filter(items, start=start) and 0 < len(got) < len(items)

    got = _ids(client.search(collections=["sentinel-2-l2a"], query={"eo:cloud_cover": {"lt": 50}}))
    assert got == _python_filter(items, max_cloud=50) and 0 < len(got) < len(items)

    combined = client.search(
        collections=["sentinel-2-l2a"],
        bbox=near,
        datetime="2021-01-01/2021-12-31",
        query={"eo:cloud_cover": {"lt": 50}},
    )
    end = datetime.fromisoformat("2021-12-31T23:59:59+00:00")
    assert _ids(combined) == _python_filter(items, bbox=near, end=end, max_cloud=50)

    # Items come back in Planetary Computer's shape, hrefs pointing at the range server.
    item = next(client.search(collections=["sentinel-2-l2a"], max_items=1).items())
    assert item.assets["B04"].href.startswith(cog_http_url)
    assert item.properties["s2:processing_baseline"] in {"02.15", "03.01", "04.00", "05.09"}
    with rasterio.open(item.assets["SCL"].href) as ds:
        assert ds.read(1, window=Window(0, 0, 8, 8)).shape == (8, 8)


def test_stac_api_pages(demo_scenes_tiny, stac_api_url):
    client = pystac_client.Client.open(stac_api_url)
    search = client.search(collections=["sentinel-2-l2a"], limit=1)
    pages = list(search.pages())
    assert len(pages) == len(demo_scenes_tiny.items()) > 1
    assert all(len(p.items) == 1 for p in pages)
    paged = sorted(i.id for p in pages for i in p.items)
    assert paged == sorted(it["id"] for it in demo_scenes_tiny.items())  # no duplicates, no holes
    assert search.matched() in (None, len(paged))


def test_stac_api_bbox_separates_two_tiles(tmp_path):
    """Two MGRS tiles: a bbox over one returns only that tile's items (compared with a direct filter)."""
    scenes = make_demo_scenes(tmp_path / "two", size="small", n_dates=2)
    items = scenes.items()
    assert len({it["properties"]["s2:mgrs_tile"] for it in items}) == 2
    with stac_api_server(scenes.collection_path, scenes.items_path) as url:
        client = pystac_client.Client.open(url)
        for it in items[:: len(items) // 2]:
            c = shape(it["geometry"]).centroid
            bbox = (c.x - 0.01, c.y - 0.01, c.x + 0.01, c.y + 0.01)
            got = _ids(client.search(collections=["sentinel-2-l2a"], bbox=bbox))
            assert got == _python_filter(items, bbox=bbox)
            assert {i.split("_T")[1][:5] for i in got} == {it["properties"]["s2:mgrs_tile"]}


def test_missing_postgres_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("EO_JEPA_PG_BINDIR", str(tmp_path))
    monkeypatch.setattr(servers.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    with (
        pytest.raises(RuntimeError, match=r"PostgreSQL binary 'initdb'.*system-deps"),
        stac_api_server({}, []),
    ):
        pass


def test_servers_do_not_outlive_a_killed_owner(demo_scenes_tiny, tmp_path):
    """kill -9 of the process running the servers: the API and range server die with it, and the next
    start removes its orphaned PostgreSQL cluster."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = (
        "import sys, time\n"
        "from eo_jepa.demo.servers import range_http_server, stac_api_server\n"
        "with range_http_server(sys.argv[1]) as u, stac_api_server(sys.argv[2], sys.argv[3]) as s:\n"
        "    print(u, s, flush=True)\n"
        "    time.sleep(600)\n"
    )
    d = demo_scenes_tiny
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(d.cog_dir), str(d.collection_path), str(d.items_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        range_url, api_url = proc.stdout.readline().split()
        assert urllib.request.urlopen(api_url + "/collections", timeout=10).status == 200
        clusters = [
            p.parent
            for p in Path("/tmp").glob("eo-jepa-pgstac-*/owner.pid")
            if p.read_text() == str(proc.pid)
        ]
        assert len(clusters) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()

    def reachable(url):
        try:
            urllib.request.urlopen(url, timeout=2)
        except OSError:
            return False
        return True

    deadline = time.monotonic() + 20
    while (reachable(range_url) or reachable(api_url + "/")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not reachable(range_url) and not reachable(api_url + "/")
    assert (clusters[0] / "data" / "postmaster.pid").exists()  # postgres itself is a daemon: orphaned
    servers._remove_stale_clusters(servers.find_postgres_bindir(), os.geteuid() == 0)
    assert not clusters[0].exists()


def test_postgres_without_postgis_is_a_clear_error(monkeypatch, tmp_path):
    fake = tmp_path / "99" / "bin"
    fake.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        (fake / name).write_text("#!/bin/sh\nexit 1\n")
    monkeypatch.setenv("EO_JEPA_PG_BINDIR", str(fake))
    with monkeypatch.context() as m:
        m.setattr(servers.glob, "glob", lambda pattern: [])
        m.setattr(servers.shutil, "which", lambda name: None)
        with pytest.raises(RuntimeError, match=r"PostGIS extension .* was not found .*system-deps"):
            servers.find_postgres_bindir()
    # With the real installation also present, the one that has PostGIS is chosen.
    assert servers.find_postgres_bindir() != fake
