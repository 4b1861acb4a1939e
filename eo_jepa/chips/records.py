"""What a chip build writes down: the plan (``.build/plan.json``), one journal entry per task
(``.build/partials/task-NNNNNN.json``) and the index row of each chip, as dataclasses.

Their ``to_dict`` gives exactly the JSON the builder has always written (same keys, same order) and
``from_dict`` reads what earlier versions wrote, so a build interrupted before an upgrade resumes
after it (tests/test_chips_build.py resumes a build journalled by an earlier version).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from eo_jepa.chips.grid import Location
from eo_jepa.chips.read import ChipRead
from eo_jepa.stac import ItemInfo

PLAN_FORMAT = 1
# A plan location's grid fields: every Location field but the footprint (written as WKT text).
LOCATION_FIELDS = tuple(f.name for f in dataclasses.fields(Location) if f.name != "footprint")


@dataclass
class PlannedAoi:
    """One AOI of the plan, with how many scenes its search found."""

    aoi_id: str
    label: str | None
    split: str
    start: str
    end: str
    bbox: list[float]  # lon/lat
    geometry: dict[str, Any]  # GeoJSON, EPSG:4326
    items_found: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlannedAoi:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass
class PlannedLocation:
    """One chip location of the plan: its grid cell and its candidate scenes (item ids, best first)."""

    location: Location  # footprint None: the WKT text below is what the index records
    footprint: str  # WKT, EPSG:4326, as written when the plan was made
    candidates: list[str]

    def to_dict(self) -> dict[str, Any]:
        grid = {k: getattr(self.location, k) for k in LOCATION_FIELDS}
        return {**grid, "footprint": self.footprint, "candidates": list(self.candidates)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlannedLocation:
        location = Location(**{k: data[k] for k in LOCATION_FIELDS}, footprint=None)
        return cls(location, data["footprint"], list(data["candidates"]))


@dataclass
class Plan:
    """The work of a build, fixed before any chip is read: config, AOIs, scenes and locations.

    A location's chips take Zarr rows ``index * dates_per_location + slot``, ``index`` being its
    position in :attr:`locations`.
    """

    format: int
    eo_jepa_version: str
    created: str  # ISO 8601, UTC
    config: dict[str, Any]  # the ChipConfig as a dict (resume compares it with the one given)
    source: str  # the STAC API URL or static file searched
    collection: str
    collections: list[str]
    items_dropped_by_collection: dict[str, int]  # static sources: other collections' items left out
    aois: list[PlannedAoi]
    items: dict[str, ItemInfo]  # every scene that is some location's candidate
    locations: list[PlannedLocation]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["aois"] = [dataclasses.asdict(a) for a in self.aois]
        out["items"] = {k: v.to_dict() for k, v in self.items.items()}
        out["locations"] = [loc.to_dict() for loc in self.locations]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            format=data.get("format", PLAN_FORMAT),
            eo_jepa_version=data["eo_jepa_version"],
            created=data["created"],
            config=data["config"],
            source=data["source"],
            collection=data["collection"],
            collections=list(data.get("collections", [data["collection"]])),
            items_dropped_by_collection=dict(data.get("items_dropped_by_collection", {})),
            aois=[PlannedAoi.from_dict(a) for a in data["aois"]],
            items={k: ItemInfo.from_dict(v) for k, v in data["items"].items()},
            locations=[PlannedLocation.from_dict(e) for e in data["locations"]],
        )


@dataclass
class ChipRecord:
    """One chip's row of the index (and of its task's journal entry), chosen scene or not."""

    chip_id: str  # "<location_id>_<slot>"
    row: int  # Zarr row; -1 when no pixels were written
    location_id: str
    slot: int  # which of the location's dates
    aoi_id: str
    split: str
    label: str | None
    datetime: str | None  # of the scene; None without one
    crs: str  # "EPSG:<code>" of the chip grid
    transform: list[float]  # affine a, b, c, d, e, f of the chip grid
    geometry: str  # footprint, WKT, EPSG:4326
    item_ids: list[str] = field(default_factory=list)
    hrefs: list[str] = field(default_factory=list)
    cloud_fraction: float | None = None
    nodata_fraction: float | None = None
    offset: int = 0  # DN offset applied (Sensor.offset_for)
    offset_source: str | None = None  # what decided it
    warped: bool = False  # a band was reprojected/resampled onto the chip grid
    status: str = "rejected"  # "ok", "rejected" or "transient"
    reason: str | None = None  # why not "ok"

    @classmethod
    def unfilled(cls, loc: Location, slot: int, footprint_wkt: str) -> ChipRecord:
        """The record of slot ``slot`` of ``loc`` before a scene is chosen for it (rejected, no reason)."""
        return cls(
            chip_id=f"{loc.location_id}_{slot}",
            row=-1,
            location_id=loc.location_id,
            slot=slot,
            aoi_id=loc.aoi_id,
            split=loc.split,
            label=loc.label,
            datetime=None,
            crs=f"EPSG:{loc.epsg}",
            transform=list(loc.transform),
            geometry=footprint_wkt,
        )

    def read_from(self, chip: ChipRead) -> None:
        """Record the scene ``chip`` was read from and what reading it found."""
        self.datetime = chip.datetime
        self.item_ids = [chip.item_id]
        self.hrefs = chip.hrefs
        self.cloud_fraction = chip.cloud_fraction
        self.nodata_fraction = chip.nodata_fraction
        self.offset = chip.offset
        self.offset_source = chip.offset_source
        self.warped = chip.warped

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChipRecord:
        return cls(**data)


@dataclass
class TaskJournal:
    """A finished task's journal entry: its chips' records, the items it could not read and its
    pixels' partial histograms (:meth:`eo_jepa.chips.stats.BandHistograms.to_sparse`)."""

    task_id: int
    records: list[ChipRecord]
    skipped: dict[str, str]  # item id -> why (bad data)
    transient: dict[str, str]  # item id -> why (unreadable right now: the task is retried on --resume)
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["records"] = [r.to_dict() for r in self.records]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskJournal:
        return cls(
            task_id=data["task_id"],
            records=[ChipRecord.from_dict(r) for r in data["records"]],
            skipped=dict(data["skipped"]),
            transient=dict(data.get("transient", {})),
            stats=data["stats"],
        )
