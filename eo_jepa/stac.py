"""STAC search, item parsing and Planetary Computer signing.

- :func:`search_items` asks a STAC API (pystac-client; bbox/intersects, datetime, ``eo:cloud_cover``
  through ``query``, paging through ``next`` links, retries with exponential back-off on connection
  errors and 5xx/429 answers) or filters a static source (an ItemCollection JSON file or a static
  ``catalog.json``) by the same criteria. Every HTTP request goes through :func:`bounded_session`:
  each attempt ends within ``timeout_s`` all told (a server that never answers or drips bytes cannot
  hold it), retries are capped, a server's ``Retry-After`` is obeyed up to a cap and logged.
- :func:`parse_item` turns a STAC item into a small picklable :class:`ItemInfo`; it accepts
  ``proj:epsg`` or ``proj:code`` (pystac >= 1.15 rewrites the former into the latter) and item- or
  asset-level ``proj:transform``/``proj:shape``.
- :func:`sign_href` signs Planetary Computer blob URLs (``*.blob.core.windows.net``) with a SAS token
  right before a read, with a bounded timeout on the token request; other URLs pass unchanged.
  (``planetary_computer.sign`` retries the token endpoint without a timeout and can hang offline.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from eo_jepa.errors import StacError

log = logging.getLogger(__name__)

BLOB_DOMAIN = ".blob.core.windows.net"
RETRY_STATUS = (429, 500, 502, 503, 504)


# --------------------------------------------------------------------------- item parsing


@dataclass(frozen=True)
class AssetInfo:
    href: str
    epsg: int | None = None
    transform: tuple[float, ...] | None = None  # affine a, b, c, d, e, f
    shape: tuple[int, int] | None = None  # rows, cols


@dataclass(frozen=True)
class ItemInfo:
    """What the chip builder needs from a STAC item (plain data: picklable, JSON-able)."""

    id: str
    collection: str | None
    datetime: str  # ISO 8601, UTC
    geometry: dict[str, Any]  # GeoJSON, EPSG:4326
    cloud_cover: float | None
    baseline: str | None  # Sentinel-2 s2:processing_baseline
    epsg: int | None
    assets: dict[str, AssetInfo] = field(default_factory=dict)
    # The provider already removed BOA_ADD_OFFSET (Earth Search's earthsearch:boa_offset_applied).
    offset_applied: bool = False
    product_uri: str | None = None  # s2:product_uri: encodes the processing baseline (_N0509_)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["assets"] = {k: dict(v.__dict__) for k, v in self.assets.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemInfo:
        assets = {
            k: AssetInfo(
                href=v["href"],
                epsg=v.get("epsg"),
                transform=tuple(v["transform"]) if v.get("transform") else None,
                shape=tuple(v["shape"]) if v.get("shape") else None,  # type: ignore[arg-type]
            )
            for k, v in data["assets"].items()
        }
        return cls(**{**data, "assets": assets})

    @property
    def when(self) -> dt.datetime:
        return _parse_datetime(self.datetime)


def _epsg_of(fields: Mapping[str, Any]) -> int | None:
    """EPSG code from ``proj:epsg`` (int) or ``proj:code`` ('EPSG:32633')."""
    epsg = fields.get("proj:epsg")
    if epsg is not None:
        return int(epsg)
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    return None


def _parse_datetime(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _resolve_href(href: str, base_dir: Path | None) -> str:
    if "://" in href or href.startswith("/") or base_dir is None:
        return href[len("file://") :] if href.startswith("file://") else href
    return str((base_dir / href).resolve())


def parse_item(item: Any, *, base_dir: Path | None = None) -> ItemInfo:
    """A pystac Item (or its dict) as :class:`ItemInfo`; relative asset hrefs resolve against base_dir."""
    data = item.to_dict(include_self_link=False, transform_hrefs=False) if hasattr(item, "to_dict") else item
    props = data.get("properties", {})
    when = props.get("datetime") or props.get("start_datetime")
    if not when:
        raise StacError(f"STAC item {data.get('id')!r} has no datetime; it cannot be placed in a date range.")
    item_epsg = _epsg_of(props)
    assets: dict[str, AssetInfo] = {}
    for key, asset in data.get("assets", {}).items():
        transform = asset.get("proj:transform") or props.get("proj:transform")
        shape = asset.get("proj:shape") or props.get("proj:shape")
        assets[key] = AssetInfo(
            href=_resolve_href(asset["href"], base_dir),
            epsg=_epsg_of(asset) or item_epsg,
            transform=tuple(float(v) for v in transform[:6]) if transform else None,
            shape=(int(shape[0]), int(shape[1])) if shape else None,
        )
    geometry = data.get("geometry")
    if geometry is None:
        bbox = data.get("bbox")
        if not bbox or len(bbox) < 4:
            raise StacError(
                f"STAC item {data.get('id')!r} has geometry null and no bbox, so it cannot be matched to any "
                "AOI; give it a footprint (geometry or bbox) or leave it out of the source."
            )
        from shapely.geometry import box, mapping

        log.warning("STAC item %s has geometry null; its bbox is used as its footprint", data.get("id"))
        lo = len(bbox) // 2
        geometry = mapping(box(bbox[0], bbox[1], bbox[lo], bbox[lo + 1]))
    cloud = props.get("eo:cloud_cover")
    baseline = props.get("s2:processing_baseline") or props.get("sentinel:processing_baseline")
    applied = props.get("earthsearch:boa_offset_applied", props.get("sentinel:boa_offset_applied"))
    product = props.get("s2:product_uri") or props.get("s2:product_id")
    return ItemInfo(
        id=str(data["id"]),
        collection=data.get("collection"),
        datetime=_parse_datetime(str(when)).astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        geometry=dict(geometry),
        cloud_cover=float(cloud) if cloud is not None else None,
        baseline=str(baseline) if baseline is not None else None,
        epsg=item_epsg,
        assets=assets,
        offset_applied=_flag(applied, "earthsearch:boa_offset_applied", data.get("id")),
        product_uri=str(product) if product else None,
    )


def _flag(value: Any, name: str, item_id: Any) -> bool:
    """A STAC boolean that may arrive as a string ("false" must not count as true)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise StacError(f"STAC item {item_id!r} has {name}={value!r}; expected true or false.")


# --------------------------------------------------------------------------- search


def is_api_url(source: str) -> bool:
    return urlparse(str(source)).scheme in ("http", "https")


def _retry(retries: int, backoff_s: float, max_retry_after_s: float = 60.0) -> Any:
    """urllib3 Retry: ``retries`` more tries on connection errors, read errors and 429/5xx answers,
    exponential back-off, a server's ``Retry-After`` obeyed up to ``max_retry_after_s`` (logged)."""
    retry = _CappedRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff_s,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,  # STAC searches are idempotent reads, so POST is retried too
        raise_on_status=True,
    )
    retry.max_retry_after_s = max_retry_after_s
    return retry


def _capped_retry_class() -> type:
    from urllib3.util.retry import Retry

    class CappedRetry(Retry):
        """A Retry whose wait for a server's ``Retry-After`` is capped (urllib3 obeys it uncapped:
        ``Retry-After: 3600`` would silently stall a build for an hour) and said in the log."""

        max_retry_after_s: float = 60.0

        def new(self, **kw: Any) -> CappedRetry:
            out = super().new(**kw)
            out.max_retry_after_s = self.max_retry_after_s
            return out

        def get_retry_after(self, response: Any) -> float | None:
            wait = super().get_retry_after(response)
            if wait is None:
                return None
            url = getattr(response, "url", None) or "the server"
            if wait > self.max_retry_after_s:
                log.warning(
                    "%s answered %s with Retry-After %g s; waiting %g s (stac.max_retry_after_s) before "
                    "retrying", url, response.status, wait, self.max_retry_after_s,
                )  # fmt: skip
                return self.max_retry_after_s
            log.warning("%s answered %s with Retry-After %g s; waiting", url, response.status, wait)
            return wait

    return CappedRetry


_CappedRetry: Any = _capped_retry_class()


def bounded_session(timeout_s: float, retries: int, backoff_s: float, max_retry_after_s: float = 60.0) -> Any:
    """A requests Session whose every request ends within ``timeout_s`` per attempt, whatever the server.

    The per-attempt bound covers connecting, the headers and the whole body: ``timeout_s`` applies to
    connect and to each socket read (also when the caller passes no timeout, as pystac-client 0.9's
    ``Client.open`` does), and a watchdog shuts the socket down when an attempt has not finished after
    ``timeout_s`` in all, so a server dripping a byte every few seconds cannot stretch it. Attempts
    are retried ``retries`` times (see :func:`_retry`); a request therefore fails within about
    ``timeout_s * (retries + 1)`` plus back-off.
    """
    import requests

    session = requests.Session()
    adapter = _deadline_adapter_class()(timeout_s, max_retries=_retry(retries, backoff_s, max_retry_after_s))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@functools.lru_cache(maxsize=1)
def _deadline_adapter_class() -> type:
    import socket
    import threading

    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    state = threading.local()  # the adapter's deadline and the attempts of the request in this thread

    class Watched:
        """Shuts a connection's socket down if its attempt is still running at the deadline."""

        def __init__(self, conn: Any, seconds: float) -> None:
            self.conn, self.expired = conn, False
            self.timer = threading.Timer(seconds, self._expire)
            self.timer.daemon = True
            self.timer.start()

        def _expire(self) -> None:
            self.expired = True
            sock = getattr(self.conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv in the request's thread

    def mixin(base: type) -> type:
        class Conn(base):  # type: ignore[misc,valid-type]
            def request(self, *args: Any, **kwargs: Any) -> Any:
                deadline = getattr(state, "deadline", None)
                if deadline is not None:  # one watchdog per attempt (urllib3 retries call this again)
                    state.attempts.append(Watched(self, deadline))
                return super().request(*args, **kwargs)

        return Conn

    class Pool(HTTPConnectionPool):
        ConnectionCls = mixin(HTTPConnection)

    class SPool(HTTPSConnectionPool):
        ConnectionCls = mixin(HTTPSConnection)

    class DeadlineAdapter(HTTPAdapter):
        def __init__(self, timeout_s: float, **kwargs: Any) -> None:
            self.timeout_s = float(timeout_s)
            super().__init__(**kwargs)

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": SPool}

        def send(self, request: Any, stream: bool = False, timeout: Any = None, **kwargs: Any) -> Any:
            state.deadline, state.attempts = self.timeout_s, []
            try:
                response = super().send(request, stream=stream, timeout=timeout or self.timeout_s, **kwargs)
                if not stream:
                    response.content  # noqa: B018 - read the body while the watchdog runs
                if any(a.expired for a in state.attempts):  # a body cut short without an error
                    raise requests.ConnectionError("the answer was cut off at the deadline")
                return response
            except requests.RequestException as exc:
                if any(a.expired for a in state.attempts):
                    raise requests.Timeout(
                        f"no complete answer from {request.url} within {self.timeout_s:g} s "
                        f"(stac.timeout_s), {len(state.attempts)} attempt(s)"
                    ) from exc
                raise
            finally:
                for attempt in state.attempts:
                    attempt.timer.cancel()
                state.deadline, state.attempts = None, []

    return DeadlineAdapter


def open_client(
    url: str,
    *,
    timeout_s: float = 30.0,
    retries: int = 4,
    backoff_s: float = 0.5,
    max_retry_after_s: float = 60.0,
) -> Any:
    """A pystac-client Client whose requests are all bounded (:func:`bounded_session`); StacError when
    the API is unreachable or fails."""
    import requests
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    io = StacApiIO(timeout=timeout_s, max_retries=None)
    io.session = bounded_session(timeout_s, retries, backoff_s, max_retry_after_s)
    try:
        # timeout= here too: pystac-client 0.9 resets the session's timeout to None when it is omitted
        return Client.open(url, stac_io=io, timeout=timeout_s)
    except (APIError, requests.RequestException, OSError, ValueError) as exc:
        raise StacError(
            f"STAC API {url} is unreachable or failed ({_short(exc)}); check the URL and network, "
            "or pass a local ItemCollection file as the source."
        ) from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def search_items(
    source: str,
    *,
    collection: str | Sequence[str] | None,
    intersects: Mapping[str, Any],
    start: str,
    end: str,
    max_cloud_cover: float | None = None,
    page_size: int = 100,
    max_items: int | None = None,
    timeout_s: float = 30.0,
    retries: int = 4,
    backoff_s: float = 0.5,
    max_retry_after_s: float = 60.0,
    client: Any = None,
) -> list[ItemInfo]:
    """Items intersecting a GeoJSON geometry within [start, end] (dates, inclusive), least cloudy first.

    ``collection``: one collection id or several (e.g. Earth Search's legacy and collection-1 ones).
    """
    collection = _collections(collection)
    if is_api_url(source):
        items = _search_api(
            client
            or open_client(
                source,
                timeout_s=timeout_s,
                retries=retries,
                backoff_s=backoff_s,
                max_retry_after_s=max_retry_after_s,
            ),
            source,
            collection=collection,
            intersects=intersects,
            start=start,
            end=end,
            max_cloud_cover=max_cloud_cover,
            page_size=page_size,
            max_items=max_items,
        )
    else:
        items = _search_static(
            source, collection=collection, intersects=intersects, start=start, end=end, max_cc=max_cloud_cover
        )
        if max_items is not None:
            items = sorted(items, key=lambda i: i.datetime)[:max_items]
    return sorted(items, key=_item_order)


def _collections(collection: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if not collection:
        return None
    return (collection,) if isinstance(collection, str) else tuple(collection)


def dropped_by_collection(source: str | Path, collection: str | Sequence[str] | None) -> dict[str, int]:
    """Items of a static source whose collection is not ``collection``: count by collection id."""
    wanted = _collections(collection)
    out: dict[str, int] = {}
    if wanted:
        for item in load_static_items(source):
            if item.collection and item.collection not in wanted:
                out[item.collection] = out.get(item.collection, 0) + 1
    return out


def _item_order(item: ItemInfo) -> tuple[float, str, str]:
    return (item.cloud_cover if item.cloud_cover is not None else 101.0, item.datetime, item.id)


def _search_api(
    client: Any,
    url: str,
    *,
    collection: tuple[str, ...] | None,
    intersects: Mapping[str, Any],
    start: str,
    end: str,
    max_cloud_cover: float | None,
    page_size: int,
    max_items: int | None,
) -> list[ItemInfo]:
    import requests
    from pystac_client.exceptions import APIError
    from pystac_client.warnings import PystacClientWarning

    query = {"eo:cloud_cover": {"lte": max_cloud_cover}} if max_cloud_cover is not None else None
    try:
        search = client.search(
            collections=list(collection) if collection else None,
            intersects=dict(intersects),
            datetime=f"{start}/{end}",
            query=query,
            limit=page_size,
            max_items=max_items,
        )
        return [parse_item(item) for item in search.items_as_dicts()]
    except (APIError, requests.RequestException, OSError, ValueError, PystacClientWarning) as exc:
        # PystacClientWarning (raised as DoesNotConformTo): the API lacks item search; ValueError: bad JSON
        raise StacError(
            f"STAC search at {url} failed ({_short(exc)}); check that the API is up and the collection "
            f"{', '.join(collection or ())!r} exists, then retry."
        ) from None


def load_static_items(source: str | Path) -> list[ItemInfo]:
    """All items of an ItemCollection JSON (FeatureCollection) or a static catalog/collection JSON.

    Parsed once per file version (cached on path, size and mtime), so searching many AOIs is cheap.
    """
    path = Path(source)
    if not path.is_file():
        raise StacError(
            f"STAC source {str(source)!r} is neither an http(s) API URL nor an existing JSON file; "
            "pass a STAC API URL, an ItemCollection file or a catalog.json."
        )
    st = path.stat()
    return list(_load_static(str(path.resolve()), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _load_static(path_str: str, size: int, mtime_ns: int) -> tuple[ItemInfo, ...]:
    del size, mtime_ns  # cache key only
    return tuple(_read_static(Path(path_str)))


def _read_static(path: Path) -> list[ItemInfo]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StacError(f"STAC source {str(path)!r} is not readable JSON ({_short(exc)}).") from None
    base = path.parent.resolve()
    kind = data.get("type")
    if kind == "FeatureCollection":
        return [parse_item(f, base_dir=base) for f in data.get("features", [])]
    if kind == "Feature":
        return [parse_item(data, base_dir=base)]
    if kind in ("Catalog", "Collection"):
        import pystac

        catalog = pystac.read_file(str(path))
        out = []
        for item in catalog.get_items(recursive=True):  # type: ignore[attr-defined]
            item.make_asset_hrefs_absolute()
            out.append(parse_item(item))
        return out
    raise StacError(
        f"STAC source {str(path)!r} has type {kind!r}; expected a FeatureCollection (ItemCollection), "
        "a Catalog or a Collection."
    )


def _search_static(
    source: str | Path,
    *,
    collection: tuple[str, ...] | None,
    intersects: Mapping[str, Any],
    start: str,
    end: str,
    max_cc: float | None,
) -> list[ItemInfo]:
    from shapely.geometry import shape

    aoi = shape(intersects)
    lo, hi = _date_range(start, end)
    out = []
    for item in load_static_items(source):
        if collection and item.collection and item.collection not in collection:
            continue
        if max_cc is not None and item.cloud_cover is not None and item.cloud_cover > max_cc:
            continue
        if not lo <= item.when <= hi:
            continue
        if not shape(item.geometry).intersects(aoi):
            continue
        out.append(item)
    return out


def _date_range(start: str, end: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end] as UTC datetimes; a bare end date includes that whole day."""
    lo = _parse_datetime(start if "T" in start else f"{start}T00:00:00")
    hi = _parse_datetime(end if "T" in end else f"{end}T23:59:59.999999")
    return lo, hi


def unique_items(groups: Iterable[Iterable[ItemInfo]]) -> dict[str, ItemInfo]:
    out: dict[str, ItemInfo] = {}
    for group in groups:
        for item in group:
            out.setdefault(item.id, item)
    return out


# --------------------------------------------------------------------------- signing


def needs_signing(href: str) -> bool:
    parsed = urlparse(href)
    if not parsed.netloc.endswith(BLOB_DOMAIN) or parsed.netloc.startswith("ai4edatasetspublicassets."):
        return False
    return not set(parse_qs(parsed.query)) & {"st", "se", "sp"}


def sign_href(href: str, *, timeout_s: float = 10.0, retries: int = 2) -> str:
    """Planetary Computer blob URL with a SAS token appended; any other href unchanged.

    The token request (``$PC_SDK_SAS_URL`` or PC's default endpoint; subscription key from
    ``$PC_SDK_SUBSCRIPTION_KEY``) has a per-attempt timeout and few retries, so an offline machine
    fails in seconds with :class:`StacError` instead of hanging. Tokens are cached until a minute
    before they expire (planetary_computer's cache, shared with its own ``sign``).
    """
    if not needs_signing(href):
        return href
    import requests
    from planetary_computer import sas
    from planetary_computer.settings import DEFAULT_SAS_TOKEN_ENDPOINT
    from planetary_computer.utils import parse_blob_url

    account, container = parse_blob_url(urlparse(href))
    endpoint = os.environ.get("PC_SDK_SAS_URL") or DEFAULT_SAS_TOKEN_ENDPOINT
    token_url = f"{endpoint.rstrip('/')}/{account}/{container}"
    token = sas.TOKEN_CACHE.get(token_url)
    if token is None or token.ttl() < 60:
        key = os.environ.get("PC_SDK_SUBSCRIPTION_KEY")
        session = bounded_session(timeout_s, retries, 0.5)
        try:
            response = session.get(
                token_url, headers={"Ocp-Apim-Subscription-Key": key} if key else None, timeout=timeout_s
            )
            response.raise_for_status()
            token = sas.SASToken(**response.json())
        except (requests.RequestException, ValueError, TypeError) as exc:
            raise StacError(
                f"Could not get a Planetary Computer SAS token from {token_url} ({_short(exc)}); check the "
                "network, or set stac.sign=never for public or pre-signed hrefs."
            ) from None
        finally:
            session.close()
        sas.TOKEN_CACHE[token_url] = token
    return token.sign(href).href
