"""The data snapshot: the exact rows a model was trained and evaluated on, as fetch wrote them, and how to read them.

The contract between fetching (tasks/data.py) and every step after it (features, evaluation, publish, verify).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from trainkite.runfiles import local_copy
from trainkite.store import ArtifactStore

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "validation", "test", "evaluation")
# The snapshot's format, row order and fingerprint rule; older models record 1 or 2 (tasks/data.py
# snapshot_fingerprint, in_schema_order). 3 orders each split by a hash of the row, not by its text: any run
# of consecutive rows is then a random sample of the split, which is what a block-wise batch order needs
# (models/fit.py epoch_order); sorted by text, near-duplicates sat together.
SNAPSHOT_SCHEMA = 3
BATCH_ROWS = 65_536


class DatasetRef(BaseModel):
    """What the later steps need to know about the fetched rows (small, JSON-able)."""

    snapshot_path: str
    snapshot_key: str | None = None
    fingerprint: str
    labels: list[str]
    counts: dict[str, int]
    source: Literal["local", "athena"]
    query: str
    evaluation_query: str | None = None
    athena: dict[str, str | None] | None = None
    warnings: list[str] = []


def read_snapshot(path: str | Path) -> pd.DataFrame:
    import pandas as pd  # not at import: serving reads no snapshot, and its image needs no pandas

    return pd.read_parquet(path)


def split_texts(path: str | Path, split: str, every: int = 1) -> list[str]:
    """The texts of one split, in the snapshot's order (with `every` > 1, its 0th, every-th, ... text: a
    deterministic stride sample), read batch by batch without the other splits' rows or columns."""
    return split_text_array(path, split, every).to_pylist()


def split_text_array(path: str | Path, split: str, every: int = 1) -> pa.Array:
    """`split_texts` as one Arrow string array: no Python object per text."""
    chunks: list[pa.Array] = []
    position = 0  # the index, within the split, of the batch's first text of it
    for batch in iter_snapshot(path, columns=("split", "text")):
        rows = batch.column(1).filter(pc.equal(batch.column(0), split))
        chunks.append(rows.take(pa.array(range(-position % every, len(rows), every), type=pa.int64())))
        position += len(rows)
    return pa.concat_arrays(chunks) if chunks else pa.array([], type=pa.string())


def iter_snapshot(path: str | Path, batch_rows: int | None = None, columns=("split", "text", "label")):
    """The snapshot's rows as Arrow record batches, in its (canonical) order."""
    yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows or BATCH_ROWS, columns=list(columns))


def local_snapshot(ref: DatasetRef, store: ArtifactStore) -> Path:
    if ref.snapshot_key is None:
        return Path(ref.snapshot_path)
    return local_copy(store, ref.snapshot_key, Path(ref.snapshot_path))
