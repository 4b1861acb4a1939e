"""STAC search, item parsing and signing against real loopback servers (no internet)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from shapely.geometry import box, mapping, shape

from eo_jepa.errors import StacError
from eo_jepa.stac import load_static_items, parse_item, search_items, sign_href


@pytest.fixture(scope="module")
def scenes(demo_scenes_tiny):
    return demo_scenes_tiny


@pytest.fixture(scope="module")
def api_url(stac_api_url):
    """The real stac-fastapi-pgstac API on loopback (tests/conftest.py)."""
    return stac_api_url


class _Server:
    """A tiny loopback HTTP server with a scripted handler; counts requests."""

    def __init__(self, respond):
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                outer.hits += 1
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, body = respond(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _demo_item(scenes):
    return copy.deepcopy(scenes.items()[0])


# --------------------------------------------------------------------------- parsing


def test_parse_item_accepts_proj_epsg_and_proj_code(scenes):
    raw = _demo_item(scenes)
    a = parse_item(raw)
    assert a.epsg == 32632 and a.assets["B04"].epsg == 32632
    assert a.assets["B04"].transform[0] == 10.0 and a.assets["B11"].transform[0] == 20.0
    assert a.baseline == raw["properties"]["s2:processing_baseline"]
    # pystac >= 1.15 style: proj:code at item level, asset-level override with proj:code too.
    raw2 = copy.deepcopy(raw)
    del raw2["properties"]["proj:epsg"]
    raw2["properties"]["proj:code"] = "EPSG:32632"
    raw2["assets"]["B04"]["proj:code"] = "EPSG:32633"
    b = parse_item(raw2)
    assert b.epsg == 32632 and b.assets["B02"].epsg == 32632 and b.assets["B04"].epsg == 32633
    # item-level proj:transform/shape used when an asset has none
    raw3 = copy.deepcopy(raw)
    raw3["properties"]["proj:transform"] = [10.0, 0.0, 1.0, 0.0, -10.0, 2.0]
    raw3["properties"]["proj:shape"] = [5, 6]
    del raw3["assets"]["B02"]["proj:transform"], raw3["assets"]["B02"]["proj:shape"]
    c = parse_item(raw3)
    assert c.assets["B02"].transform == (10.0, 0.0, 1.0, 0.0, -10.0, 2.0) and c.assets["B02"].shape == (5, 6)
    assert type(c).from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert not a.offset_applied  # Planetary Computer does not harmonise
    raw4 = copy.deepcopy(raw)
    raw4["properties"]["earthsearch:boa_offset_applied"] = True  # Earth Search already did
    assert parse_item(raw4).offset_applied


def test_static_sources_filter_like_an_api(scenes):
    items = load_static_items(scenes.items_path)
    catalog = load_static_items(scenes.catalog_path)
    assert sorted(i.id for i in items) == sorted(i.id for i in catalog)
    assert all(a.href.startswith("/") for i in catalog for a in i.assets.values())  # relative hrefs resolved
    aoi = mapping(shape(scenes.aois()["features"][0]["geometry"]))
    every = search_items(
        str(scenes.items_path),
        collection="sentinel-2-l2a",
        intersects=aoi,
        start="2000-01-01",
        end="2030-12-31",
    )
    assert len(every) == len(items)
    assert [i.cloud_cover for i in every] == sorted(i.cloud_cover for i in every)  # least cloudy first
    cc = sorted(i.cloud_cover for i in items)[1]
    fewer = search_items(
        str(scenes.items_path),
        collection="sentinel-2-l2a",
        intersects=aoi,
        start="2000-01-01",
        end="2030-12-31",
        max_cloud_cover=cc,
    )
    assert {i.id for i in fewer} == {i.id for i in items if i.cloud_cover <= cc}
    first = min(i.when for i in items)
    day = first.date().isoformat()
    same_day = search_items(str(scenes.catalog_path), collection=None, intersects=aoi, start=day, end=day)
    assert [i.when.date() for i in same_day] == [first.date()]
    far = mapping(box(-60, -10, -59, -9))
    assert (
        search_items(
            str(scenes.items_path), collection=None, intersects=far, start="2000-01-01", end="2030-12-31"
        )
        == []
    )


def test_missing_static_source_is_clear(tmp_path):
    with pytest.raises(StacError, match="neither an http"):
        load_static_items(tmp_path / "nope.json")


# --------------------------------------------------------------------------- faults


def _one_day_search(url: str, collection: str = "c", **kwargs):
    """The same small query (a 1-degree box, one day) against ``url``, for the fault tests."""
    return search_items(
        url,
        collection=collection,
        intersects=mapping(box(0, 0, 1, 1)),
        start="2023-01-01",
        end="2023-01-02",
        **kwargs,
    )


def test_server_error_is_retried_then_clear(scenes):
    server = _Server(lambda path: (500, {"detail": "boom"}))
    try:
        t0 = time.perf_counter()
        with pytest.raises(StacError, match=r"STAC API http://127\.0\.0\.1:\d+ is unreachable or failed"):
            _one_day_search(server.url, collection="x", retries=2, backoff_s=0.05)
        assert server.hits == 3  # first try + 2 retries
        assert time.perf_counter() - t0 < 10
    finally:
        server.close()


def test_search_500_after_landing_page_is_clear():
    """The landing page works but /search fails: retried, then one clear sentence."""

    def respond(path):
        if path.startswith("/search"):
            return 503, {"detail": "overloaded"}
        return 200, {
            "type": "Catalog", "id": "x", "description": "x", "stac_version": "1.0.0",
            "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
            "links": [{"rel": "search", "href": "/search", "type": "application/geo+json", "method": "POST"}],
        }  # fmt: skip

    server = _Server(respond)
    try:
        with pytest.raises(StacError, match="failed") as err:
            _one_day_search(server.url, retries=1, backoff_s=0.01)
        assert "retry" in str(err.value) or "up" in str(err.value)
        assert server.hits == 1 + 2  # landing page + search tried twice
    finally:
        server.close()


def test_server_down_is_clear():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(StacError, match="unreachable"):
        _one_day_search(f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01)


# --------------------------------------------------------------------------- signing


def test_sign_leaves_non_blob_urls_alone():
    for href in ("/data/B04.tif", "http://127.0.0.1:8000/B04.tif", "https://example.org/x.tif"):
        assert sign_href(href) == href


def test_sign_blob_url_with_local_token_endpoint(monkeypatch):
    from planetary_computer import sas

    expiry = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    server = _Server(lambda path: (200, {"msft:expiry": expiry, "token": "st=1&se=2&sp=rl&sig=abc"}))
    monkeypatch.setenv("PC_SDK_SAS_URL", server.url + "/api/sas/v1/token")
    monkeypatch.setattr(sas, "TOKEN_CACHE", {})
    try:
        href = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/32/T/QM/B04.tif"
        signed = sign_href(href)
        assert signed == href + "?st=1&se=2&sp=rl&sig=abc"
        assert sign_href(href.replace("B04", "B03")).endswith("sig=abc")
        assert server.hits == 1  # the token is cached per container
        assert sign_href(signed) == signed  # already signed
    finally:
        server.close()


def test_sign_token_endpoint_that_hangs_fails_fast(monkeypatch):
    from planetary_computer import sas

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (backlog) but never answers
    monkeypatch.setenv("PC_SDK_SAS_URL", f"http://127.0.0.1:{listener.getsockname()[1]}/token")
    monkeypatch.setattr(sas, "TOKEN_CACHE", {})
    try:
        t0 = time.perf_counter()
        with pytest.raises(StacError, match="SAS token"):
            sign_href("https://x.blob.core.windows.net/c/B04.tif", timeout_s=0.3, retries=1)
        assert time.perf_counter() - t0 < 5
    finally:
        listener.close()


# --------------------------------------------------------------------------- the real API


@pytest.mark.pgstac
def test_pgstac_search_matches_static_filtering(scenes, api_url):
    items = load_static_items(scenes.items_path)
    aois = scenes.aois()["features"]
    cc = sorted(i.cloud_cover for i in items)[-2]
    for feature in (aois[0], aois[-1]):
        geom = feature["geometry"]
        kwargs = dict(
            collection="sentinel-2-l2a",
            intersects=geom,
            start="2021-01-01",
            end="2023-12-31",
            max_cloud_cover=cc,
        )
        got = search_items(api_url, page_size=1, **kwargs)  # page size 1: follows `next` links
        want = search_items(str(scenes.items_path), **kwargs)
        assert [i.id for i in got] == [i.id for i in want] and got
        assert all(i.cloud_cover <= cc for i in got)
        assert {k: v.href.rsplit("/", 2)[-2:] for k, v in got[0].assets.items()} == {
            k: v.href.rsplit("/", 2)[-2:] for k, v in want[0].assets.items()
        }
    one_year = search_items(
        api_url,
        collection="sentinel-2-l2a",
        intersects=aois[0]["geometry"],
        start="2022-01-01",
        end="2022-12-31",
    )
    assert {i.when.year for i in one_year} == {2022}
    # an unknown collection is an empty result (the builder turns "nothing found" into a clear error)
    assert (
        search_items(
            api_url,
            collection="no-such-collection",
            intersects=aois[0]["geometry"],
            start="2022-01-01",
            end="2022-12-31",
        )
        == []
    )


def test_api_without_item_search_is_clear():
    landing = {"type": "Catalog", "id": "x", "description": "x", "stac_version": "1.0.0",
               "conformsTo": ["https://api.stacspec.org/v1.0.0/core"], "links": []}  # fmt: skip
    server = _Server(lambda path: (200, landing))
    try:
        with pytest.raises(StacError, match="failed") as err:
            _one_day_search(server.url, retries=0)
        assert "\n" not in str(err.value)
    finally:
        server.close()
