"""train.shuffle = "blocks": windows of consecutive-row blocks, so a large feature file is never all resident.
Plain functions over real memory maps, features and torch."""

from __future__ import annotations

import hashlib
import mmap
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from models import registry as model_types
from models.fit import SHUFFLE_BLOCK_ROWS, WINDOW_BLOCKS, WINDOW_ROWS, epoch_order, release_pages
from tasks import data
from tests.test_scale import _params, _table, generated_rows
from trainkite.manifest import ModelRef
from trainkite.store import LocalStore


def test_a_block_order_visits_every_row_once_window_by_window_the_same_for_the_same_seed():
    n = 5 * WINDOW_ROWS + 1234  # a partial last block and a partial last window
    tp = SimpleNamespace(seed=7, shuffle="blocks")
    order = epoch_order(tp, n, 1)
    assert np.array_equal(np.sort(order), np.arange(n))
    assert np.array_equal(order, epoch_order(tp, n, 1)) and not np.array_equal(order, epoch_order(tp, n, 2))
    for start in range(0, n, WINDOW_ROWS):
        window = order[start : start + WINDOW_ROWS]
        blocks = np.unique(window // SHUFFLE_BLOCK_ROWS)
        assert len(blocks) <= WINDOW_BLOCKS  # a window reads at most 16 blocks of the file
    # Blocks come from all over the table, and rows are shuffled within a window.
    first = np.unique(order[:WINDOW_ROWS] // SHUFFLE_BLOCK_ROWS)
    assert first.max() - first.min() > WINDOW_BLOCKS
    assert not np.all(np.diff(order[:WINDOW_ROWS]) == 1)
    rows = epoch_order(SimpleNamespace(seed=7, shuffle="rows"), n, 1)
    assert np.array_equal(np.sort(rows), np.arange(n)) and not np.array_equal(rows, order)


def _resident_kib(path: Path) -> int:
    """RSS of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_released_pages_leave_the_process_and_read_back_the_same(tmp_path):
    path = tmp_path / "ids.npy"
    values = np.arange(16 * 2**20 // 4, dtype=np.int32)  # 16 MiB
    np.save(path, values)
    arr = np.load(path, mmap_mode="c")
    assert int(arr.sum(dtype=np.int64)) == int(values.sum(dtype=np.int64))  # every page touched
    assert _resident_kib(path) > 15 * 1024
    release_pages(arr)
    assert _resident_kib(path) < 1024
    assert np.array_equal(arr[::4096], values[::4096])  # the next touch reads the file again
    release_pages(np.zeros(3))  # not a map: nothing to do
    assert hasattr(mmap, "MADV_DONTNEED")


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_block_shuffled_training_learns_and_is_bit_identical(params_factory, tmp_path):
    folder = _table(tmp_path / "src", generated_rows(3 * SHUFFLE_BLOCK_ROWS))
    shas, accs = {}, {}
    for name, shuffle in [("blocks", "blocks"), ("again", "blocks"), ("rows", "rows")]:
        p = _params(params_factory, folder, **{"train.epochs": 2, "train.batch_size": 64, "train.shuffle": shuffle})
        work = tmp_path / name
        ds = data.fetch_dataset(p, work)
        store = LocalStore(tmp_path / f"store-{name}")
        feats = model_types.featurize(ds, p, store, work)
        trained = model_types.train(feats, p, store, ModelRef("sentiment", name), work)
        shas[name], accs[name] = _sha(trained.weights_path), trained.history[-1]["val_accuracy"]
    assert shas["blocks"] == shas["again"] != shas["rows"]
    # Under one window both orders are uniform permutations; two epochs on 2,458 rows differ by seed noise.
    assert accs["blocks"] > 0.7 and accs["rows"] > 0.7


def test_the_block_order_is_the_default_and_rows_is_asked_for(params_factory):
    assert params_factory().train.shuffle == "blocks"
    assert params_factory(**{"train.shuffle": "rows"}).train.shuffle == "rows"


def test_the_snapshot_orders_each_split_by_a_hash_so_sorted_texts_and_copies_spread(params_factory, tmp_path):
    # A table sorted by its label and holding 300 copies of one text: sorted by text, a block of the training
    # split would hold one label or one text; in the hashed order every block is a sample of the split.
    rows = generated_rows(6_000).sort_values(["label", "text"])
    rows = pd.concat([rows, pd.DataFrame({"text": ["same old text"] * 300, "label": ["positive"] * 300})])
    p = _params(params_factory, _table(tmp_path / "src", rows))
    ds = data.fetch_dataset(p, tmp_path / "wd")
    snap = data.read_snapshot(ds.snapshot_path)
    assert snap["split"].is_monotonic_increasing  # still one run of rows per split
    train = snap[snap["split"] == "train"].reset_index(drop=True)
    assert np.array_equal(train, data.canonical(train))  # the order is a function of the rows: the reference's
    assert not train["text"].is_monotonic_increasing
    blocks = [train.iloc[i : i + 256] for i in range(0, len(train) - 255, 256)]
    share = train["label"].eq("positive").mean()
    assert all(abs(b["label"].eq("positive").mean() - share) < 0.15 for b in blocks)
    copies = np.flatnonzero(train["text"].eq("same old text").to_numpy())
    assert len(copies) == 300 and copies[0] < 0.05 * len(train) and copies[-1] > 0.95 * len(train)
    assert (np.diff(copies) == 1).mean() < 0.2  # not one run
