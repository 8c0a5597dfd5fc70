"""Fetch labelled text with SQL (DuckDB over local files, or Athena), check it, split it, fingerprint it."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel

from params.model import DataParams, Params
from trainkite.errors import DataError, UserInputError
from trainkite.home import REPO_ROOT
from trainkite.runfiles import local_copy, run_key, stage
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.data")

SPLITS = ("train", "validation", "test", "evaluation")
MAX_TEXT_CHARS = 1_000_000


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


def resolve_data_path(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.exists():
        return p.resolve()
    return (REPO_ROOT / p).resolve()


def query_local(folder: Path, sql: str) -> pd.DataFrame:
    """DuckDB SQL over `folder`: every *.csv / *.parquet file is a table named after the file."""
    import duckdb

    if not folder.is_dir():
        raise DataError(f"data.path {str(folder)!r} is not a folder (it should hold *.csv / *.parquet tables)")
    con = duckdb.connect(":memory:")
    try:
        tables = []
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in (".csv", ".parquet") or not f.is_file():
                continue
            name = f.stem
            reader = "read_parquet" if f.suffix.lower() == ".parquet" else "read_csv"
            opts = "" if reader == "read_parquet" else ", header=true, all_varchar=true"
            quoted = str(f).replace("'", "''")
            try:
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {reader}(\'{quoted}\'{opts})')
            except duckdb.Error as err:
                # Reliability fix (issue 8): DuckDB reads (sniffs) the file here; a CSV that is not UTF-8 or
                # has an over-long line escaped as a raw 30-line exception and a CLI traceback.
                raise DataError(f"data.path: {f.name} cannot be read as a table: {_duckdb_message(err)}") from None
            tables.append(name)
        if not tables:
            raise DataError(f"data.path {str(folder)!r} holds no *.csv or *.parquet files")
        try:
            return con.execute(sql).fetch_df()
        except duckdb.Error as err:
            msg = _duckdb_message(err)
            raise DataError(f"query failed in DuckDB: {msg} (tables available: {', '.join(tables)})") from None
    finally:
        con.close()


def _duckdb_message(err: Exception) -> str:
    """DuckDB's first line plus the one that says what is wrong; not the quoted row (it may be a 10 MB text,
    or data that has no place in a log), the reader settings or the SQL caret."""
    lines = [line.strip() for line in str(err).splitlines()]
    detail = next((line for line in lines[1:] if line and len(line) < 300 and " = " not in line
                   and not line.startswith(("Original Line", "Possible Solution", "LINE ", "^"))), "")
    return f"{lines[0]} {detail}".strip()[:500] if lines else type(err).__name__


def query_athena(data: DataParams, sql: str) -> tuple[pd.DataFrame, dict[str, str | None]]:
    """The production twin: the same SQL through awswrangler (Athena)."""
    import awswrangler as wr

    if data.athena_ctas_approach and data.athena_unload_approach:
        raise UserInputError("data.athena_ctas_approach and data.athena_unload_approach cannot both be true")
    df = wr.athena.read_sql_query(
        sql,
        database=data.athena_database,
        workgroup=data.athena_workgroup,
        s3_output=data.athena_s3_output,
        ctas_approach=data.athena_ctas_approach,
        unload_approach=data.athena_unload_approach,
    )
    qid = df.attrs.get("query_metadata", {}).get("QueryExecutionId") if hasattr(df, "attrs") else None
    out = data.athena_s3_output
    return df, {"query_execution_id": qid, "s3_output": out, "database": data.athena_database,
                "workgroup": data.athena_workgroup}


def run_query(data: DataParams, sql: str) -> tuple[pd.DataFrame, dict[str, str | None] | None]:
    if data.source == "local":
        return query_local(resolve_data_path(data.path), sql), None
    return query_athena(data, sql)


def check_rows(df: pd.DataFrame, data: DataParams, what: str) -> tuple[pd.DataFrame, list[str]]:
    """Refuse rows that cannot be trained on, with a message that names the problem."""
    tc, lc = data.text_column, data.label_column
    missing = [c for c in (tc, lc) if c not in df.columns]
    if missing:
        raise DataError(
            f"{what}: column(s) {', '.join(repr(c) for c in missing)} missing from the query result "
            f"(it returned {', '.join(map(repr, df.columns)) or 'no columns'}); set data.text_column/"
            "data.label_column or alias them in the SQL"
        )
    if len(df) == 0:
        raise DataError(f"{what}: the query returned no rows; check the SQL and the tables it reads")
    df = df[[tc, lc]].rename(columns={tc: "text", lc: "label"})
    if df["text"].isna().any():
        raise DataError(f"{what}: {int(df['text'].isna().sum())} row(s) have a null text (e.g. row "
                        f"{int(df.index[df['text'].isna()][0])}); filter them in the SQL")
    if df["label"].isna().any():
        raise DataError(f"{what}: {int(df['label'].isna().sum())} row(s) have a null label; filter them in the SQL")
    df = df.assign(text=df["text"].map(_as_text), label=df["label"].map(lambda v: str(v).strip()))
    empty = df["text"].str.strip() == ""
    if empty.any():
        raise DataError(f"{what}: {int(empty.sum())} row(s) have an empty text; filter them in the SQL")
    too_long = df["text"].str.len() > MAX_TEXT_CHARS
    if too_long.any():
        raise DataError(f"{what}: {int(too_long.sum())} text(s) are longer than {MAX_TEXT_CHARS:,} characters")
    if data.labels is not None:
        bad = sorted(set(df["label"]) - set(data.labels))
        if bad:
            raise DataError(f"{what}: label(s) {bad} are not in data.labels {data.labels}")
    warnings = []
    conflicts = df.groupby("text")["label"].nunique()
    n_conf = int((conflicts > 1).sum())
    if n_conf:
        msg = f"{what}: {n_conf} text(s) appear with conflicting labels (e.g. {conflicts[conflicts > 1].index[0]!r})"
        log.warning(msg)
        warnings.append(msg)
    return df.reset_index(drop=True), warnings


# A class needs a row in each of train, validation and test to be learnt and measured at all.
MIN_CLASS_ROWS = 3


def thin_class_warnings(df: pd.DataFrame, what: str) -> list[str]:
    """Warn (not refuse) about a class with fewer rows than splits: its F1, likely 0, still counts in macro-F1."""
    counts = df["label"].value_counts()
    out = []
    for label, n in sorted(counts[counts < MIN_CLASS_ROWS].items()):
        msg = (f"{what}: class {label!r} has only {int(n)} row(s), too few to be in the train, validation and test "
               "splits; its F1 (likely 0) is averaged into macro-F1")
        log.warning(msg)
        out.append(msg)
    return out


def _as_text(v: object) -> str:
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError("a text value is not valid UTF-8; fix the encoding in the source") from None
    return str(v)


def split_of(text: str, seed: int, validation: float, test: float) -> str:
    """Stable split by hash of the text: adding rows never moves existing ones."""
    h = int.from_bytes(hashlib.sha256(f"{seed}\x1f{text}".encode()).digest()[:8], "big") / 2**64
    if h < test:
        return "test"
    if h < test + validation:
        return "validation"
    return "train"


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Row order from SQL engines is not guaranteed; sort so the same rows give the same run."""
    return df.sort_values(["split", "text", "label"], kind="mergesort").reset_index(drop=True)


def fingerprint(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for split, text, label in df[["split", "text", "label"]].itertuples(index=False):
        h.update(json.dumps([split, text, label], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def labels_of(df: pd.DataFrame, data: DataParams) -> list[str]:
    seen = sorted(set(df.loc[df["split"] != "evaluation", "label"]))
    if data.labels is not None:
        return list(data.labels)
    return seen


def fetch_dataset(params: Params, workdir: Path, store: ArtifactStore | None = None,
                  prefix: str | None = None) -> DatasetRef:
    """Run the queries, check and split the rows, write the snapshot (Parquet) and fingerprint it.

    With a store, the snapshot is also staged there (`<prefix>/run/snapshot.parquet`) for re-runs.
    """
    data = params.data
    raw, athena = run_query(data, data.query)
    rows, warnings = check_rows(raw, data, "data.query")
    warnings += thin_class_warnings(rows, "data.query")  # the training rows only: they are what gets split
    rows["split"] = [split_of(t, data.split_seed, data.validation_fraction, data.test_fraction) for t in rows["text"]]
    if params.evaluation.query:
        eraw, _ = run_query(data, params.evaluation.query)
        ev, w2 = check_rows(eraw, data, "evaluation.query")
        warnings += w2
        ev["split"] = "evaluation"
        rows = pd.concat([rows, ev], ignore_index=True)
    rows = canonical(rows)
    train_labels = set(rows.loc[rows["split"] == "train", "label"])
    if len(set(rows.loc[rows["split"] != "evaluation", "label"])) < 2:
        raise DataError(f"data.query: only one class ({sorted(train_labels)}) in the data; a classifier needs two")
    if len(train_labels) < 2:
        raise DataError("data.query: the training split holds a single class; add rows or change the split")
    labels = labels_of(rows, data)
    unknown_eval = sorted(set(rows.loc[rows["split"] == "evaluation", "label"]) - set(labels))
    if unknown_eval:
        raise DataError(f"evaluation.query: label(s) {unknown_eval} never occur in the training data {labels}")
    counts = {s: int((rows["split"] == s).sum()) for s in SPLITS}
    if counts["validation"] == 0:
        raise DataError("data.query: too few rows for a validation split; add rows or raise data.validation_fraction")
    workdir.mkdir(parents=True, exist_ok=True)
    snap = workdir / "data" / "snapshot.parquet"
    snap.parent.mkdir(parents=True, exist_ok=True)
    rows[["split", "text", "label"]].to_parquet(snap, index=False)
    key = stage(store, snap, run_key(prefix, "snapshot.parquet")) if store is not None and prefix else None
    return DatasetRef(
        snapshot_path=str(snap),
        snapshot_key=key,
        fingerprint=fingerprint(rows),
        labels=labels,
        counts=counts,
        source=data.source,
        query=data.query,
        evaluation_query=params.evaluation.query,
        athena=athena,
        warnings=warnings,
    )


def read_snapshot(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def local_snapshot(ref: DatasetRef, store: ArtifactStore) -> Path:
    if ref.snapshot_key is None:
        return Path(ref.snapshot_path)
    return local_copy(store, ref.snapshot_key, Path(ref.snapshot_path))


def snapshot_fingerprint(path: str | Path) -> str:
    return fingerprint(canonical(read_snapshot(path)))
