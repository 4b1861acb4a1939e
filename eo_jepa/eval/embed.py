"""Export one embedding per chip as GeoParquet (for GIS, DuckDB or a vector index).

Each row is a chip of a chip store (status ``ok``): ``chip_id``, ``location_id``, ``aoi_id``,
``split``, ``label``, ``datetime``, ``row``, the footprint ``geometry`` (EPSG:4326) and
``embedding``, a fixed-size list of float32 (the encoder's global embedding). The file is valid
GeoParquet (``geo`` metadata written by GeoPandas) and also records the model and its bands under
the ``eo_jepa`` schema-metadata key.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from eo_jepa.chips import ChipDataset
from eo_jepa.errors import DataError
from eo_jepa.eval.features import FeatureKind, extract_features
from eo_jepa.utils.io import atomic_open

log = logging.getLogger(__name__)

COLUMNS = ("chip_id", "location_id", "aoi_id", "split", "label", "datetime", "row")


def embed_chips(
    encoder: Any,
    store: str | Path,
    out: str | Path,
    *,
    kind: FeatureKind = "global",
    batch_size: int = 64,
    device: str | None = None,
    bf16: bool = False,
    model_name: str | None = None,
    workers: int = 0,
) -> Path:
    """Embed every ok chip of ``store`` and write ``out`` (GeoParquet) atomically; returns ``out``."""
    import geopandas as gpd
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = Path(store)
    if not (store / "dataset.json").is_file():
        raise DataError(
            f"{str(store)!r} is not a chip store (no dataset.json); `embed` needs chip footprints, build one "
            "with `eo-jepa chips build`."
        )
    ds = ChipDataset(store)
    ok = ds.index  # the ok chips, in dataset order (the order features are extracted in)
    feats = extract_features(
        encoder, ds, kind=kind, batch_size=batch_size, device=device, bf16=bf16, workers=workers, desc="embed"
    )
    cols = {c: ok[c].to_numpy() for c in COLUMNS if c in ok.columns}
    frame = gpd.GeoDataFrame(cols, geometry=ok.geometry.to_numpy(), crs=ok.crs or "EPSG:4326")
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    table = pq.read_table(io.BytesIO(buf.getvalue()))
    dim = int(feats.shape[1]) if feats.ndim == 2 else 0
    values = pa.array(np.ascontiguousarray(feats, dtype=np.float32).reshape(-1), type=pa.float32())
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, dim))
    meta = dict(table.schema.metadata or {})
    meta[b"eo_jepa"] = json.dumps(
        {
            "model": model_name,
            "arch": getattr(encoder, "arch", None),
            "bands": list(encoder.bands),
            "embed_dim": dim,
            "kind": kind,
            "store": store.name,
        }
    ).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_open(out, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
    log.info("wrote %d embeddings (dim %d) to %s", len(table), dim, out)
    return Path(out)
