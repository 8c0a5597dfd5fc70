"""Fetch labelled text with SQL (DuckDB over local files, or Athena), check it, split it, fingerprint it."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from params.model import DataParams, Params
from tasks.duckdb_signals import interrupt_on_signal, signals_kept
from trainkite.columns import DELIMITERS, header_splits, same_name
from trainkite.errors import DataError, UserInputError
from trainkite.home import REPO_ROOT
from trainkite.runfiles import SNAPSHOT, run_key, stage
from trainkite.snapshot import SNAPSHOT_SCHEMA, SPLITS, DatasetRef, iter_snapshot, read_snapshot
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.data")

MAX_TEXT_CHARS = 1_000_000


def resolve_data_path(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.exists():
        return p.resolve()
    return (REPO_ROOT / p).resolve()


RAW_BATCH_ROWS = 65_536
_NESTED = (
    pa.types.is_list,
    pa.types.is_large_list,
    pa.types.is_fixed_size_list,
    pa.types.is_struct,
    pa.types.is_map,
    pa.types.is_union,
    pa.types.is_list_view,
    pa.types.is_large_list_view,
)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# A table's file names, longest first, and how DuckDB reads them. Compressed CSV and JSON lines are read as they are.
_READERS = {
    ".csv.gz": "csv",
    ".tsv.gz": "tsv",
    ".jsonl.gz": "json",
    ".ndjson.gz": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "json",
    ".ndjson": "json",
}
TABLE_FILES = "*.csv, *.tsv, *.parquet or *.jsonl files (.gz too), or folders of them"


def _reader_of(name: str) -> tuple[str, str] | None:
    """(table name, reader) of a file name that is a table, else None."""
    lower = name.lower()
    for suffix, reader in _READERS.items():
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], reader
    return None


def _inside(f: Path, root: Path, folder: Path) -> Path:
    real = f.resolve()
    # A link out of the folder would make another host file a table.
    if not real.is_relative_to(root):
        raise DataError(
            f"data.path: {f.relative_to(folder)} links outside {str(folder)!r}; copy the file into the folder"
        )
    return real


def _folder_table(sub: Path, root: Path, folder: Path) -> tuple[str, list[Path]] | None:
    """A subfolder of part files (Spark, Athena UNLOAD, awswrangler datasets; hive `key=value` folders too) is one
    table named after it. Marker and hidden files (_SUCCESS, .crc) are skipped; parts of two kinds are refused."""
    parts = {
        f: named[1]
        for f in sorted(sub.rglob("*"))
        if f.is_file() and not f.name.startswith((".", "_")) and (named := _reader_of(f.name)) is not None
    }
    if not parts:
        return None
    kinds = set(parts.values())
    if len(kinds) > 1:
        raise DataError(
            f"data.path: folder {sub.name!r} mixes {' and '.join(sorted(kinds))} files; a folder table is one kind"
        )
    return kinds.pop(), [_inside(f, root, folder) for f in parts]


def _table_files(folder: Path) -> list[tuple[str, str, list[Path]]]:
    """(table name, reader, files) of every table in `folder`: each table file, and each subfolder of them. A
    `folder` that is itself a table file is that one table."""
    if folder.is_file() and (named := _reader_of(folder.name)):
        return [(named[0], named[1], [folder.resolve()])]
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"data.path {str(folder)!r} {what} (it should hold {TABLE_FILES}, or be one)")
    root = folder.resolve()
    out: dict[str, tuple[str, list[Path]]] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith((".", "_")):
            continue
        if f.is_dir():
            found = _folder_table(f, root, folder)
            name = f.name
        else:
            named = _reader_of(f.name) if f.is_file() else None
            found = (named[1], [_inside(f, root, folder)]) if named else None
            name = named[0] if named else f.name
        if found is None:
            continue
        if name in out:
            raise DataError(f"data.path: two tables would be named {name!r}; rename one of the files or folders")
        out[name] = found
    if not out:
        raise DataError(f"data.path {str(folder)!r} holds no {TABLE_FILES}{_not_tables(folder)}")
    return [(name, reader, files) for name, (reader, files) in out.items()]


def _not_tables(folder: Path) -> str:
    """For a message: the files in `folder` that are not tables (an .xlsx the team meant, say), or ''."""
    if not folder.is_dir():
        return ""
    names = sorted(
        f.name for f in folder.iterdir() if f.is_file() and not f.name.startswith((".", "_")) and not _reader_of(f.name)
    )
    if not names:
        return ""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"; not read as tables: {shown} (save a spreadsheet as CSV or Parquet)"


def _scan(reader: str, files: list[Path]) -> str:
    paths = "[" + ", ".join(_literal(str(f)) for f in files) + "]"
    if reader == "parquet":
        hive = any("=" in part for f in files for part in f.parts[-3:-1])
        return f"read_parquet({paths}, union_by_name=true{', hive_partitioning=true' if hive else ''})"
    if reader == "json":
        return f"read_json({paths}, format='newline_delimited')"
    delim = ", delim='\t'" if reader == "tsv" else ""
    return f"read_csv({paths}, header=true, all_varchar=true{delim})"


def open_local(folder: Path, sql: str | None = None):
    """A DuckDB connection that can read the tables of `folder` and nothing else: a view per table, then file
    access limited to exactly those files, no extension loading or installing, and the configuration locked
    so the query cannot undo any of it. With `sql`, only the tables it names are opened: a folder of other
    files next to the table (an old export, a file DuckDB cannot read) does not stop the run."""
    import duckdb

    found = _table_files(folder)
    con = _connect()
    try:
        tables = [name for name, _, _ in found]
        wanted = None
        if sql is not None:
            try:  # DuckDB's names are case-insensitive
                wanted = {t.lower() for t in con.get_table_names(sql)}
            except duckdb.Error:
                pass  # not resolvable without the tables: open them all, and let the query say what is wrong
        for name, reader, files in found:
            if wanted is not None and name.lower() not in wanted:
                continue
            first = files[0].relative_to(folder.resolve()) if folder.is_dir() else Path(files[0].name)
            where = first if len(files) == 1 else f"{first.parent}/ (one of its {len(files)} files)"
            # An empty part (a writer's empty partition) holds no rows, and DuckDB would take its missing header
            # for the table's; a table of nothing but empty files is refused as such.
            nonempty = [f for f in files if f.stat().st_size > 0]
            if not nonempty:
                what = first if len(files) == 1 else f"{first.parent}/ (all {len(files)} files)"
                raise DataError(f"data.path: {what} is empty (0 bytes): no header, no rows")
            files = nonempty
            try:
                con.execute(f"CREATE VIEW {_ident(name)} AS SELECT * FROM {_scan(reader, files)}")
            except duckdb.Error as err:
                # DuckDB reads (sniffs) the file here; a CSV that is not UTF-8 or has an over-long line must
                # not escape as a raw exception. A TSV's sniff fails outright on a ragged line: name it.
                bad = _first_rejected_line(con, files, "\t") if reader == "tsv" else None
                if bad is not None:
                    raise _ragged(where, "\t", bad, "DuckDB could not read it as a table") from None
                raise DataError(f"data.path: {where} cannot be read as a table: {_duckdb_message(err)}") from None
            if reader in ("csv", "tsv"):
                _refuse_misread_csv(con, name, reader, files, where)
        allowed = [f for _, _, files in found for f in files]
        con.execute(f"SET allowed_paths = [{', '.join(_literal(str(f)) for f in allowed)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET allow_community_extensions = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con, tables


def _first_rejected_line(con, files: list[Path], delim: str) -> tuple[str, int, str] | None:
    """(file name, line, DuckDB's reason) of the first line that does not split into the header's fields at `delim`,
    from DuckDB's own reject store; None if every line does. Only on a failure's path: it reads the files once."""
    import duckdb

    paths = "[" + ", ".join(_literal(str(f)) for f in files) + "]"
    probe = (
        f"SELECT count(*) FROM read_csv({paths}, header=true, all_varchar=true, delim={_literal(delim)}, quote='\"', "
        "escape='\"', store_rejects=true)"
    )
    try:
        con.execute(probe).fetchall()  # to the end: the rejects are stored when the scan finishes
        bad = con.execute(
            "SELECT f.file_path, e.line, e.error_message FROM reject_errors e JOIN reject_scans f USING (scan_id, "
            "file_id) WHERE e.line IS NOT NULL ORDER BY f.file_path, e.line LIMIT 1"
        ).fetchone()
    except duckdb.Error:
        return None
    return (Path(bad[0]).name, int(bad[1]), bad[2]) if bad else None


def _ragged(where, delim: str, bad: tuple[str, int, str], how: str) -> DataError:
    return DataError(
        f"data.path: {where} does not split into columns at {delim!r} (line {bad[1]:,} of {bad[0]}: {bad[2]}); "
        f"{how}. Quote the texts that hold {delim!r}, or fix that line"
    )


def _header_fields(path: Path, reader: str) -> tuple[str, list[str]] | None:
    """(delimiter, fields) of a CSV's first line, the header, split as a standard CSV line at the first delimiter that
    gives two or more fields (a TSV: at tabs); None for a one-field line (one column, or a title above the table)."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
        line = f.readline(1 << 20)
    splits = header_splits(line, ("\t",) if reader == "tsv" else DELIMITERS)
    return next(((delim, fields) for delim, fields in splits if len(fields) >= 2), None)


def _refuse_misread_csv(con, name: str, reader: str, files: list[Path], where) -> None:
    """A CSV with a line that does not split like its header (an unquoted comma in a text) defeats DuckDB's sniffer,
    which then finds some dialect every line fits: each whole line as one column named 'text,label', or no quotes and
    a data row taken for the header. The query fails on a missing column, or trains on the wrong cells. Where DuckDB's
    columns are not the first line's fields, the first line that does not split like it is named."""
    header = _header_fields(files[0], reader)
    if header is None:
        return
    delim, fields = header
    columns = [d[0] for d in con.execute(f"SELECT * FROM {_ident(name)} LIMIT 0").description]
    if len(columns) == len(fields):
        return
    bad = _first_rejected_line(con, files, delim)
    if bad is not None:  # else every line splits alike under another quoting (backslash escapes): DuckDB's reading
        raise _ragged(where, delim, bad, f"DuckDB read it as {len(columns)} column(s) ({', '.join(columns)[:80]!r})")


def one_select(sql: str, what: str) -> None:
    """The query is one SELECT: no COPY, ATTACH, INSTALL, SET, PRAGMA or second statement runs."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise DataError(f"{what}: the SQL does not parse: {_duckdb_message(err)}") from None
    if len(statements) != 1:
        raise DataError(f"{what} must be exactly one SELECT statement; it holds {len(statements)} statements")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise DataError(f"{what} must be a SELECT statement, not {kind.name}; only reads of data.path are run")


def query_local_to(folder: Path, sql: str, out: Path, what: str = "data.query", batch_rows: int | None = None) -> None:
    """Run `sql` over the tables in `folder` and stream its result to the Parquet file `out`."""
    import duckdb

    batch_rows = batch_rows or RAW_BATCH_ROWS

    one_select(sql, what)
    con, tables = open_local(folder, sql)

    def failed(err: Exception) -> DataError:
        return DataError(
            f"query failed in DuckDB: {_duckdb_message(err)} (tables available: {', '.join(tables)}"
            f"{_not_tables(folder)})"
        )

    def batches(reader):
        # What DuckDB meets while streaming (a CSV line past the sniffed sample with a field too many, bytes that
        # are not UTF-8) reaches Python through Arrow's stream as OSError / ArrowException, not duckdb.Error.
        it = iter(reader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except (OSError, pa.ArrowException) as err:
                raise failed(err) from None
            yield batch

    try:
        try:
            reader = con.sql(sql).to_arrow_reader(batch_rows)
            _write_batches(batches(reader), reader.schema, out)
        except duckdb.Error as err:
            raise failed(err) from None
    finally:
        con.close()


def query_local(folder: Path, sql: str) -> pd.DataFrame:
    """The query result as a DataFrame (small results: tools and tests; training streams instead)."""
    with tempfile.TemporaryDirectory(prefix="trainkite-query-") as tmp:
        out = Path(tmp) / "raw.parquet"
        query_local_to(folder, sql, out)
        return pd.read_parquet(out)


def _write_batches(batches, schema: pa.Schema, out: Path) -> None:
    with pq.ParquetWriter(out, schema) as writer:
        for batch in batches:
            if batch.num_rows:
                writer.write_batch(batch)


_SYSTEM_SUGGESTION = re.compile(r'\s*Did you mean "(?:duckdb_|pg_|pragma_|sqlite_|information_schema)[^"]*"\?')


def _duckdb_message(err: Exception) -> str:
    """DuckDB's first line plus the one that says what is wrong; not the quoted row (it may be a 10 MB text,
    or data that has no place in a log), the reader settings, the SQL caret, or a catalog name DuckDB offers in
    place of a missing table that is its own ("Did you mean "duckdb_views"?"), never the user's."""
    text = _SYSTEM_SUGGESTION.sub("", str(err))
    lines = [line.strip() for line in text.splitlines()]
    detail = next(
        (
            line
            for line in lines[1:]
            if line
            and len(line) < 300
            and " = " not in line
            and not line.startswith(("Original Line", "Possible Solution", "LINE ", "^"))
        ),
        "",
    )
    return f"{lines[0]} {detail}".strip()[:500] if lines else type(err).__name__


ATHENA_CHUNK_ROWS = 100_000


def query_athena_to(data: DataParams, sql: str, out: Path, chunk_rows: int | None = None) -> dict[str, str | None]:
    """The production twin: the same SQL through awswrangler (Athena), read in chunks into `out`. Athena's
    own controls (the workgroup's) govern what the SQL may do."""
    import awswrangler as wr

    if data.athena_ctas_approach and data.athena_unload_approach:
        raise UserInputError("data.athena_ctas_approach and data.athena_unload_approach cannot both be true")
    chunks = wr.athena.read_sql_query(
        sql,
        database=data.athena_database,
        workgroup=data.athena_workgroup,
        s3_output=data.athena_s3_output,
        ctas_approach=data.athena_ctas_approach,
        unload_approach=data.athena_unload_approach,
        chunksize=chunk_rows or ATHENA_CHUNK_ROWS,
    )
    if isinstance(chunks, pd.DataFrame):
        chunks = iter([chunks])
    qid = None
    writer = None
    schema = None
    try:
        for df in chunks:
            if qid is None and hasattr(df, "attrs"):
                qid = df.attrs.get("query_metadata", {}).get("QueryExecutionId")
            table = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(out, schema)
            elif table.schema != schema:
                table = table.cast(schema)
            writer.write_table(table)
        if writer is None:
            pq.write_table(pa.table({}), out)
    finally:
        if writer is not None:
            writer.close()
    return {
        "query_execution_id": qid,
        "s3_output": data.athena_s3_output,
        "database": data.athena_database,
        "workgroup": data.athena_workgroup,
    }


def query_athena(data: DataParams, sql: str) -> tuple[pd.DataFrame, dict[str, str | None]]:
    with tempfile.TemporaryDirectory(prefix="trainkite-query-") as tmp:
        out = Path(tmp) / "raw.parquet"
        meta = query_athena_to(data, sql, out)
        return pd.read_parquet(out), meta


def run_query_to(data: DataParams, sql: str, out: Path, what: str) -> dict[str, str | None] | None:
    if data.source == "local":
        query_local_to(resolve_data_path(data.path), sql, out, what)
        return None
    return query_athena_to(data, sql, out)


def run_query(data: DataParams, sql: str) -> tuple[pd.DataFrame, dict[str, str | None] | None]:
    if data.source == "local":
        return query_local(resolve_data_path(data.path), sql), None
    return query_athena(data, sql)


def _connect():
    """An in-memory DuckDB that loads no extensions, interrupted by a signal inside `signals_kept`."""
    import duckdb

    return interrupt_on_signal(
        duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    )


def _engine(tmp: Path):
    """DuckDB for our own SQL over the fetched rows (never the user's): bounded memory, spills to `tmp`."""
    con = _connect()
    con.execute(f"SET temp_directory = {_literal(str(tmp / 'spill'))}")
    con.execute("SET memory_limit = '512MB'")
    con.execute("SET preserve_insertion_order = false")
    return con


def _column_expr(schema: pa.Schema, column: str, what: str, role: str, name: str) -> str:
    t = schema.field(column).type
    if any(test(t) for test in _NESTED):
        raise DataError(
            f"{what}: the {role} column {column!r} is of type {t}, not a plain value; a {role} must be "
            "a string (or a number for labels): pick a field or join the list in the SQL"
        )
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return f"decode({name})"
    return f"CAST({name} AS VARCHAR)"


def _row(n: int) -> str:
    return f"row {n:,}"


def _result_column(names: list[str], key: str, wanted: str, what: str) -> str | None:
    """The result's column for data.text_column / data.label_column (`key`), or None. SQL names ignore case (DuckDB,
    Athena) while a result keeps the table's spelling: `SELECT text` over a CSV headed `Text` returns `Text`, and
    Athena lowercases every name. Two columns that differ only in case are one name to the engine: refused."""
    folded = same_name(names, wanted)
    if len(folded) > 1:
        raise DataError(
            f"{what}: the result has columns {', '.join(map(repr, folded))}, one name to SQL, which ignores case: "
            f"{key} = {wanted!r} cannot tell them apart; alias one of them in the SQL"
        )
    return folded[0] if folded else None


def check_raw(con, raw: Path, data: DataParams, what: str, view: str) -> list[str]:
    """Refuse rows that cannot be trained on, with a message that names the problem and a row (0-based, in
    the query's order). Creates the view `view` (rn, text, label) over the checked rows."""
    import duckdb

    schema = pq.read_schema(raw)
    tc = _result_column(schema.names, "data.text_column", data.text_column, what)
    lc = _result_column(schema.names, "data.label_column", data.label_column, what)
    missing = [c for c, found in ((data.text_column, tc), (data.label_column, lc)) if found is None]
    if missing:
        raise DataError(
            f"{what}: column(s) {', '.join(repr(c) for c in missing)} missing from the query result "
            f"(it returned {', '.join(map(repr, schema.names)) or 'no columns'}); set data.text_column/"
            "data.label_column or alias them in the SQL"
        )
    text_expr = _column_expr(schema, tc, what, "text", "t")
    label_expr = _column_expr(schema, lc, what, "label", "l")
    src = f"read_parquet({_literal(str(raw))}, file_row_number=true)"
    con.execute(
        f"CREATE VIEW {view}_in AS SELECT file_row_number AS rn, {_ident(tc)} AS t, {_ident(lc)} AS l FROM {src}"
    )
    n, null_t, first_null_t, null_l, first_null_l = con.execute(
        f"SELECT count(*), count(*) FILTER (t IS NULL), min(rn) FILTER (t IS NULL), "
        f"count(*) FILTER (l IS NULL), min(rn) FILTER (l IS NULL) FROM {view}_in"
    ).fetchone()
    if n == 0:
        raise DataError(f"{what}: the query returned no rows; check the SQL and the tables it reads")
    if null_t:
        raise DataError(
            f"{what}: {null_t:,} row(s) have a null text (e.g. {_row(first_null_t)}); filter them in the SQL"
        )
    if null_l:
        raise DataError(
            f"{what}: {null_l:,} row(s) have a null label (e.g. {_row(first_null_l)}); filter them in the SQL"
        )
    con.execute(f"CREATE VIEW {view} AS SELECT rn, {text_expr} AS text, trim({label_expr}) AS label FROM {view}_in")
    try:
        empty, first_empty, long, first_long, no_label, first_no_label = con.execute(
            f"SELECT count(*) FILTER (e), min(rn) FILTER (e), count(*) FILTER (g), min(rn) FILTER (g), "
            f"count(*) FILTER (label = ''), min(rn) FILTER (label = '') FROM "
            f"(SELECT rn, label, regexp_full_match(text, '[\\s\\p{{Z}}\\x{{85}}\\x{{1c}}-\\x{{1f}}]*') AS e, "
            f"length(text) > {MAX_TEXT_CHARS} AS g FROM {view})"
        ).fetchone()
    except duckdb.Error as err:
        if "UTF" in str(err) or "utf" in str(err):
            raise DataError(f"{what}: a text value is not valid UTF-8; fix the encoding in the source") from None
        raise
    if empty:
        raise DataError(
            f"{what}: {empty:,} row(s) have an empty text (e.g. {_row(first_empty)}); filter them in the SQL"
        )
    if long:
        raise DataError(
            f"{what}: {long:,} text(s) are longer than {MAX_TEXT_CHARS:,} characters (e.g. {_row(first_long)})"
        )
    if no_label:
        raise DataError(
            f"{what}: {no_label:,} row(s) have an empty label (e.g. {_row(first_no_label)}); filter them in the SQL"
        )
    if data.labels is not None:
        allowed = ", ".join(_literal(v) for v in data.labels)
        bad = con.execute(
            f"SELECT label, min(rn) FROM {view} WHERE label NOT IN ({allowed}) GROUP BY label ORDER BY label"
        ).fetchall()
        if bad:
            raise DataError(
                f"{what}: label(s) {[b[0] for b in bad]} are not in data.labels {data.labels} "
                f"(e.g. {_row(min(b[1] for b in bad))}); list them in data.labels, or unset it "
                "(--set data.labels=null) to take the labels from the data"
            )
    else:
        _refuse_case_variants(con, view, what)
    warnings = []
    n_conf, example = con.execute(
        f"SELECT count(*), min(text) FROM (SELECT text FROM {view} GROUP BY text HAVING count(DISTINCT label) > 1)"
    ).fetchone()
    if n_conf:
        msg = f"{what}: {n_conf} text(s) appear with conflicting labels (e.g. {example!r})"
        log.warning(msg)
        warnings.append(msg)
    return warnings


def _refuse_case_variants(con, view: str, what: str) -> None:
    """Labels taken from the data that differ only in letter case or surrounding space ('Positive', 'positive', and
    'positive' with a no-break space) are one class typed two ways: trained as two, each gets half the rows and
    macro-F1 counts a class nobody meant. Listing both in data.labels keeps them apart on purpose."""
    # Per distinct label, so the regex costs nothing per row: trim() took the spaces, not a tab or a spreadsheet's NBSP.
    key = "lower(regexp_replace(label, '^[\\s\\p{Z}]+|[\\s\\p{Z}]+$', '', 'g'))"
    clash = con.execute(
        f"WITH c AS (SELECT label, {key} AS k, count(*) AS n, min(rn) AS first FROM {view} GROUP BY label) "
        "SELECT label, n, first FROM c WHERE k = "
        "(SELECT min(k) FROM c GROUP BY k HAVING count(*) > 1 ORDER BY 1 LIMIT 1) ORDER BY label"
    ).fetchall()
    if clash:
        rarest = min(clash, key=lambda c: (c[1], c[2]))  # the odd spelling, where it first occurs
        raise DataError(
            f"{what}: labels {', '.join(repr(c[0]) for c in clash)} differ only in letter case or surrounding "
            f"space (e.g. {_row(rarest[2])}: {rarest[0]!r}); normalise them in the SQL (e.g. lower(label)), "
            "or list each in data.labels to keep them apart"
        )


# A class needs a row in each of train, validation and test to be learnt and measured at all.
MIN_CLASS_ROWS = 3


# Rare classes are warned one by one up to this many, then in one line.
RARE_CLASSES_NAMED = 5
# Labels taken from the data of which most are rare, this many or more: an ID or free-text column picked as the label
# by mistake, refused before a model with a class per row is trained (20,000 such "classes" ran out of 24 GB).
MANY_RARE_CLASSES = 20


def check_class_rows(label_counts: dict[str, int], data: DataParams, what: str) -> list[str]:
    """Warn (not refuse) about classes with fewer rows than splits: their F1, likely 0, still counts in macro-F1.
    Refuse labels from the data that are mostly such classes: that column does not hold classes."""
    rare = sorted((lab, int(n)) for lab, n in label_counts.items() if n < MIN_CLASS_ROWS)
    if not rare:
        return []
    some = ", ".join(f"{lab!r} ({n})" for lab, n in rare[:RARE_CLASSES_NAMED])
    if data.labels is None and len(rare) >= MANY_RARE_CLASSES and 2 * len(rare) > len(label_counts):
        raise DataError(
            f"{what}: {len(rare):,} of the {len(label_counts):,} labels taken from the data have fewer than "
            f"{MIN_CLASS_ROWS} rows each (e.g. {some}): is the label column an ID or free text? Select the column of "
            "classes in the SQL (or data.label_column); keep the classes with rows to learn from (... WHERE label IN "
            f"(SELECT label FROM <table> GROUP BY label HAVING count(*) >= {MIN_CLASS_ROWS})); or list the classes in "
            "data.labels to train on them anyway"
        )
    tail = "too few to be in the train, validation and test splits"
    if len(rare) <= RARE_CLASSES_NAMED:
        out = [
            f"{what}: class {lab!r} has only {n} row(s), {tail}; its F1 (likely 0) is averaged into macro-F1"
            for lab, n in rare
        ]
    else:
        out = [
            f"{what}: {len(rare):,} classes have fewer than {MIN_CLASS_ROWS} rows each (e.g. {some}), {tail}; their "
            "F1 (likely 0) is averaged into macro-F1"
        ]
    for msg in out:
        log.warning(msg)
    return out


def check_rows(df: pd.DataFrame, data: DataParams, what: str) -> tuple[pd.DataFrame, list[str]]:
    """The same checks on a DataFrame (tools and tests): the checked rows as (text, label)."""
    with tempfile.TemporaryDirectory(prefix="trainkite-check-") as tmp:
        raw = Path(tmp) / "raw.parquet"
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), raw)
        con = _engine(Path(tmp))
        try:
            warnings = check_raw(con, raw, data, what, "rows")
            out = con.execute("SELECT text, label FROM rows ORDER BY rn").fetch_df()
        finally:
            con.close()
    return out, warnings


def split_of(text: str, seed: int, validation: float, test: float) -> str:
    """Stable split by hash of the text: adding rows never moves existing ones."""
    h = int.from_bytes(hashlib.sha256(f"{seed}\x1f{text}".encode()).digest()[:8], "big") / 2**64
    if h < test:
        return "test"
    if h < test + validation:
        return "validation"
    return "train"


def row_order_key(text: str, label: str, copy: int) -> int:
    """Snapshot schema 3's order within a split: the first 8 bytes of sha256("<text>\x1f<label>\x1f<copy>"),
    `copy` numbering identical rows from 0 so that a row's copies spread over the split too."""
    return int.from_bytes(hashlib.sha256(f"{text}\x1f{label}\x1f{copy}".encode()).digest()[:8], "big")


# The same key in DuckDB, over a relation with columns split, text, label and copy.
_ORDER_KEY_SQL = "('0x' || left(sha256(text || chr(31) || label || chr(31) || copy::VARCHAR), 16))::UBIGINT"


def canonical(df: pd.DataFrame, schema: int = SNAPSHOT_SCHEMA) -> pd.DataFrame:
    """Row order from SQL engines is not guaranteed: the snapshot's order for `schema`, a function of the rows
    alone (by split, then by row_order_key; schemas 1 and 2 by split, text, label)."""
    if schema < 3:
        return df.sort_values(["split", "text", "label"], kind="mergesort").reset_index(drop=True)
    copy = df.groupby(["split", "text", "label"], sort=False).cumcount()
    key = np.fromiter(
        (row_order_key(t, lb, c) for t, lb, c in zip(df["text"], df["label"], copy, strict=True)),
        dtype=np.uint64,
        count=len(df),
    )
    order = df.assign(_key=key).sort_values(["split", "_key", "text", "label"], kind="mergesort")
    return order.drop(columns="_key").reset_index(drop=True)


def fingerprint_v1(df: pd.DataFrame) -> str:
    """Snapshot schema 1's fingerprint (one JSON line per row): kept to check the data of older models."""
    h = hashlib.sha256()
    for split, text, label in df[["split", "text", "label"]].itertuples(index=False):
        h.update(json.dumps([split, text, label], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


class _Fingerprint:
    """sha256 of the canonical rows from their Arrow buffers: per column, the stream of value lengths and the
    stream of UTF-8 bytes, so the digest is the same however the rows are cut into batches."""

    COLUMNS = ("split", "text", "label")

    def __init__(self, schema: int = SNAPSHOT_SCHEMA) -> None:
        self.schema = schema
        self._h = {(c, part): hashlib.sha256() for c in self.COLUMNS for part in ("len", "data")}

    def update(self, batch: pa.RecordBatch) -> None:
        for c in self.COLUMNS:
            arr = batch.column(batch.schema.get_field_index(c))
            if arr.null_count:
                raise DataError(f"snapshot: column {c!r} holds nulls")
            if pa.types.is_large_string(arr.type):
                off_type = np.int64
            else:
                arr = arr.cast(pa.string())
                off_type = np.int32
            offsets = np.frombuffer(arr.buffers()[1], dtype=off_type)[arr.offset : arr.offset + len(arr) + 1]
            self._h[(c, "len")].update(np.diff(offsets).astype("<i8").tobytes())
            data = arr.buffers()[2]
            if data is not None and len(arr):
                self._h[(c, "data")].update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])

    def hexdigest(self) -> str:
        top = hashlib.sha256(f"trainkite.snapshot/{self.schema}\n".encode())
        for key in sorted(self._h):
            top.update(self._h[key].digest())
        return top.hexdigest()


def fingerprint(df: pd.DataFrame) -> str:
    """The fingerprint of rows in canonical order (columns split, text, label)."""
    fp = _Fingerprint()
    for batch in pa.Table.from_pandas(df[["split", "text", "label"]], preserve_index=False).to_batches():
        fp.update(batch)
    return fp.hexdigest()


def _hold_out(con) -> list[str]:
    """The evaluation set is held out: training rows (q0) whose text it also holds (q1) are left out of the split,
    with a warning, so a table that holds its own labelled sample cannot score the model on rows it trained on."""
    shared, total = con.execute("SELECT count(*) FILTER (text IN (SELECT text FROM q1)), count(*) FROM q0").fetchone()
    if not shared:
        return []
    if shared == total:
        raise DataError(
            f"evaluation.query: every one of data.query's {total:,} rows has a text the evaluation set also holds: "
            "nothing is left to train on that the evaluation would not score; point the two queries at different rows"
        )
    msg = (
        f"evaluation.query: {shared:,} of data.query's {total:,} rows have a text the evaluation set also holds; "
        "they are left out of training, validation and test so that the evaluation stays held out"
    )
    log.warning(msg)
    return [msg]


SNAPSHOT_ROW_GROUP = 131_072


@signals_kept()
def fetch_dataset(
    params: Params, workdir: Path, store: ArtifactStore | None = None, prefix: str | None = None
) -> DatasetRef:
    """Run the queries, check and split the rows, write the snapshot (Parquet) and fingerprint it.

    The rows never sit in Python objects: the query result streams to Parquet, DuckDB checks, splits and
    orders it, and the fingerprint reads the snapshot's Arrow batches. Nothing is written to `workdir` until
    every check passed. With a store, the snapshot is also staged there (`<prefix>/run/snapshot.parquet`).
    """
    data = params.data
    tmp = Path(tempfile.mkdtemp(prefix="trainkite-fetch-"))
    con = None
    try:
        raw = tmp / "raw.parquet"
        athena = run_query_to(data, data.query, raw, "data.query")
        con = _engine(tmp)
        warnings = check_raw(con, raw, data, "data.query", "q0")
        # The training rows only: they are what gets split.
        warnings += check_class_rows(
            dict(con.execute("SELECT label, count(*) FROM q0 GROUP BY label").fetchall()), data, "data.query"
        )
        seed, test = data.split_seed, data.test_fraction
        upto_validation = data.test_fraction + data.validation_fraction
        # split_of, in SQL: the first 8 bytes of sha256("<seed>\x1f<text>") as a fraction of 2**64.
        h = (
            f"(('0x' || left(sha256({_literal(str(seed))} || chr(31) || text), 16))::UBIGINT::DOUBLE "
            "/ 18446744073709551616.0)"
        )
        pool = "q0"
        evaluation = []
        if params.evaluation.query:
            eraw = tmp / "eval.parquet"
            run_query_to(data, params.evaluation.query, eraw, "evaluation.query")
            warnings += check_raw(con, eraw, data, "evaluation.query", "q1")
            warnings += _hold_out(con)
            pool = "q0 WHERE text NOT IN (SELECT text FROM q1)"
            evaluation.append("SELECT 'evaluation' AS split, text, label FROM q1")
        parts = [
            f"SELECT CASE WHEN {h} < {test!r} THEN 'test' WHEN {h} < {upto_validation!r} THEN 'validation' "
            f"ELSE 'train' END AS split, text, label FROM {pool}",
            *evaluation,
        ]
        snap_tmp = tmp / "snapshot.parquet"
        write_ordered(con, f"({' UNION ALL '.join(parts)})", snap_tmp, SNAPSHOT_SCHEMA)
        snap_sql = f"read_parquet({_literal(str(snap_tmp))})"
        counts = dict.fromkeys(SPLITS, 0)
        counts.update(dict(con.execute(f"SELECT split, count(*) FROM {snap_sql} GROUP BY split").fetchall()))
        seen = [
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT label FROM {snap_sql} WHERE split <> 'evaluation' ORDER BY label"
            ).fetchall()
        ]
        train_labels = [
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT label FROM {snap_sql} WHERE split = 'train' ORDER BY label"
            ).fetchall()
        ]
        eval_labels = [
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT label FROM {snap_sql} WHERE split = 'evaluation' ORDER BY label"
            ).fetchall()
        ]
        con.close()
        con = None
        if len(seen) < 2:
            raise DataError(f"data.query: only one class ({train_labels}) in the data; a classifier needs two")
        if len(train_labels) < 2:
            raise DataError("data.query: the training split holds a single class; add rows or change the split")
        labels = list(data.labels) if data.labels is not None else seen
        unknown_eval = sorted(set(eval_labels) - set(labels))
        if unknown_eval:
            by_case = {lab.lower(): lab for lab in labels}
            hint = "; ".join(
                f"{u!r} is {by_case[u.lower()]!r} there: labels are case-sensitive"
                for u in unknown_eval
                if u.lower() in by_case
            )
            raise DataError(
                f"evaluation.query: label(s) {unknown_eval} never occur in the training data {labels}"
                + (f" ({hint})" if hint else "")
            )
        if counts["validation"] == 0:
            raise DataError(
                "data.query: too few rows for a validation split; add rows or raise data.validation_fraction"
            )
        fp = snapshot_fingerprint(snap_tmp, schema=SNAPSHOT_SCHEMA)
        snap = workdir / "data" / "snapshot.parquet"
        snap.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(snap_tmp), snap)
    except Exception as err:
        import duckdb

        if isinstance(err, duckdb.Error):
            raise DataError(f"data: checking the query result failed in DuckDB: {_duckdb_message(err)}") from None
        raise
    finally:
        if con is not None:
            con.close()
        shutil.rmtree(tmp, ignore_errors=True)
        # Arrow's allocator keeps the freed query batches (100+ MB at a million rows) for reuse; the next
        # steps allocate through numpy and torch, so give them back.
        pa.default_memory_pool().release_unused()
    key = stage(store, snap, run_key(prefix, SNAPSHOT)) if store is not None and prefix else None
    return DatasetRef(
        snapshot_path=str(snap),
        snapshot_key=key,
        fingerprint=fp,
        labels=labels,
        counts=counts,
        source=data.source,
        query=data.query,
        evaluation_query=params.evaluation.query,
        athena=athena,
        warnings=warnings,
    )


def write_ordered(con, relation: str, out: Path, schema: int) -> None:
    """COPY the rows of `relation` (split, text, label) to a Parquet snapshot at `out` in `schema`'s canonical
    order (see `canonical`); DuckDB sorts and groups out of core, under the engine's memory limit."""
    if schema < 3:
        query = f"SELECT split, text, label FROM {relation} ORDER BY split, text, label"
    else:
        # Identical rows are one group whose copies get numbers 0..n-1: which copy gets which does not matter.
        query = (
            "SELECT split, text, label FROM (SELECT split, text, label, unnest(range(count(*))) AS copy "
            f"FROM {relation} GROUP BY split, text, label) ORDER BY split, {_ORDER_KEY_SQL}, text, label"
        )
    con.execute(f"COPY ({query}) TO {_literal(str(out))} (FORMAT parquet, ROW_GROUP_SIZE {SNAPSHOT_ROW_GROUP})")


@signals_kept()
def in_schema_order(path: str | Path, schema: int, workdir: Path) -> Path:
    """The snapshot at `path` with its rows in `schema`'s order: itself for this code's schema, else a copy
    under `workdir` (an older model's rows re-fetched today, put back in the order it trained on)."""
    if schema == SNAPSHOT_SCHEMA:
        return Path(path)
    if schema not in (1, 2):
        raise DataError(f"snapshot schema {schema} is unknown to this code (it knows 1 to {SNAPSHOT_SCHEMA})")
    out = workdir / "data" / f"snapshot.schema{schema}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    con = _engine(out.parent)
    try:
        write_ordered(con, f"read_parquet({_literal(str(path))})", out, schema)
    finally:
        con.close()
    return out


def snapshot_fingerprint(path: str | Path, schema: int = SNAPSHOT_SCHEMA, batch_rows: int | None = None) -> str:
    """The fingerprint of a snapshot file whose rows are in `schema`'s order (`in_schema_order`): schema 1 is
    an older model's JSON-lines rule; 2 and 3 hash the Arrow buffers under their own header."""
    if schema == 1:
        return fingerprint_v1(canonical(read_snapshot(path), schema=1))
    if schema not in (2, SNAPSHOT_SCHEMA):
        raise DataError(f"snapshot schema {schema} is unknown to this code (it knows 1 to {SNAPSHOT_SCHEMA})")
    fp = _Fingerprint(schema)
    for batch in iter_snapshot(path, batch_rows):
        fp.update(batch)
    return fp.hexdigest()
