"""Fetching, checking, splitting and fingerprinting rows (plain functions, real DuckDB)."""

import pandas as pd
import pytest

from tasks import data
from trainkite.errors import DataError


def _params(params_factory, folder, **ov):
    return params_factory(**{"data.path": str(folder), **ov})


def _write(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / f"{name}.csv", index=False)


def test_demo_data_fetch(params_factory, demo_data, tmp_path):
    ds = data.fetch_dataset(_params(params_factory, demo_data), tmp_path / "wd")
    assert ds.labels == ["negative", "neutral", "positive"]
    assert ds.counts["evaluation"] == 200 and ds.counts["train"] > 600
    assert len(ds.fingerprint) == 64
    snap = data.read_snapshot(ds.snapshot_path)
    # The human-labelled evaluation set is the test: no test split is carved from the training rows.
    assert set(snap["split"]) == {"train", "validation", "evaluation"}


def test_parquet_tables_work(params_factory, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    df = pd.read_csv(data.resolve_data_path("data/demo") / "comments.csv")
    df.to_parquet(folder / "comments.parquet")
    p = _params(params_factory, folder, **{"evaluation.query": ""})
    p.evaluation.query = None
    ds = data.fetch_dataset(p, tmp_path / "wd")
    assert ds.counts["train"] > 600


def test_split_is_stable_when_rows_are_added():
    texts = [f"comment number {i}" for i in range(500)]
    before = {t: data.split_of(t, 17, 0.1, 0.1) for t in texts}
    more = texts + [f"new comment {i}" for i in range(500)]
    after = {t: data.split_of(t, 17, 0.1, 0.1) for t in more}
    assert all(after[t] == s for t, s in before.items())
    assert 30 < sum(s == "test" for s in before.values()) < 75


def test_fingerprint_ignores_row_order_but_not_content(params_factory, demo_data, tmp_path):
    p = _params(params_factory, demo_data)
    a = data.fetch_dataset(p, tmp_path / "a").fingerprint
    p.data.query = "SELECT text, sentiment AS label FROM comments ORDER BY random()"
    b = data.fetch_dataset(p, tmp_path / "b").fingerprint
    assert a == b
    p.data.query = "SELECT text, sentiment AS label FROM comments WHERE comment_id <> 'c00001'"
    assert data.fetch_dataset(p, tmp_path / "c").fingerprint != a


BAD = [
    ("empty", [{"text": "a", "label": "x"}], "SELECT text, label FROM t WHERE 1=0", "no rows"),
    ("missing column", [{"body": "a", "label": "x"}], "SELECT * FROM t", "'text'"),
    (
        "null text",
        [{"text": None, "label": "negative"}, {"text": "b", "label": "positive"}],
        "SELECT * FROM t",
        "null text",
    ),
    (
        "empty text",
        [{"text": "  ", "label": "negative"}, {"text": "b", "label": "positive"}],
        "SELECT * FROM t",
        "empty text",
    ),
    ("one class", [{"text": f"t{i}", "label": "positive"} for i in range(50)], "SELECT * FROM t", "one class"),
    (
        "label outside set",
        [{"text": "a", "label": "negative"}, {"text": "b", "label": "angry"}],
        "SELECT * FROM t",
        "['angry'] are not in data.labels",
    ),
    ("sql error", [{"text": "a", "label": "x"}], "SELECT nope FROM t", "query failed in DuckDB"),
    ("missing table", [{"text": "a", "label": "x"}], "SELECT * FROM other", "tables available: t"),
]


@pytest.mark.parametrize("name, rows, sql, needle", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_refused(params_factory, tmp_path, name, rows, sql, needle):
    folder = tmp_path / "src"
    _write(folder, "t", rows)
    p = _params(params_factory, folder, **{"data.query": sql})
    p.evaluation.query = None
    with pytest.raises(DataError) as e:
        data.fetch_dataset(p, tmp_path / "wd")
    assert needle in str(e.value)
    assert not (tmp_path / "wd" / "data").exists()


def _csv_lines(folder, name, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.csv").write_text("".join(line + "\n" for line in lines))


QUOTED_COMMAS = [
    f'"row {i}: {"great team, fair pay" if i % 2 else "awful hours, no help"}",{["negative", "positive"][i % 2]}'
    for i in range(60)
]
GOOD_LINES = [f'"row {i} {"good" if i % 2 else "bad"}",{["negative", "positive"][i % 2]}' for i in range(60)]


@pytest.mark.parametrize(
    "lines, needle",
    [
        # a field too many or too few early on: DuckDB's sniffer falls back to one column named 'text,label'
        (["text,label", *GOOD_LINES[:20], "a, b,positive", *GOOD_LINES[20:]], "line 22 of t.csv: Expected Number of "),
        (["text,label", *GOOD_LINES[:20], "lonely", *GOOD_LINES[20:]], "line 22 of t.csv: Expected Number of "),
        # quoted texts holding commas and one that is not: the sniffer drops quoting, takes a data row for header
        (
            ["text,label", *QUOTED_COMMAS[:3], "fine, but slow,positive", *QUOTED_COMMAS[3:]],
            "line 5 of t.csv: Expected",
        ),
    ],
    ids=["field too many", "field too few", "quoted commas and one unquoted"],
)
def test_a_csv_whose_lines_do_not_split_alike_is_refused_naming_the_line(params_factory, tmp_path, lines, needle):
    _csv_lines(tmp_path / "src", "t", lines)
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT text, label FROM t"})
    p.evaluation.query = None
    with pytest.raises(DataError, match="t.csv does not split into columns at ','") as e:
        data.fetch_dataset(p, tmp_path / "wd")
    assert needle in str(e.value) and "Quote the texts that hold ','" in str(e.value)
    assert not (tmp_path / "wd" / "data").exists()


def test_a_tsv_with_a_field_too_many_is_refused_naming_the_line(params_factory, tmp_path):
    (tmp_path / "src").mkdir()
    lines = [
        "text\tlabel",
        *(f"row {i} {'good' if i % 2 else 'bad'}\t{['negative', 'positive'][i % 2]}" for i in range(60)),
    ]
    lines.insert(30, "a\tb\tc")
    (tmp_path / "src" / "t.tsv").write_text("\n".join(lines) + "\n")
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT text, label FROM t"})
    p.evaluation.query = None
    with pytest.raises(DataError, match=r"t.tsv does not split into columns at '\\t' \(line 31 of t.tsv: Expected"):
        data.fetch_dataset(p, tmp_path / "wd")


def test_a_one_column_csv_whose_quoted_header_holds_a_comma_is_read_as_it_is(tmp_path):
    _csv_lines(tmp_path / "src", "t", ['"text, as typed"', '"great pay, kind team"', '"awful hours, no breaks"'])
    con, _ = data.open_local(tmp_path / "src", "SELECT * FROM t")
    try:
        assert con.execute("SELECT * FROM t").fetchall() == [("great pay, kind team",), ("awful hours, no breaks",)]
    finally:
        con.close()


def test_csvs_duckdb_reads_with_other_quoting_or_a_title_line_are_read_as_it_reads_them(tmp_path):
    """The first line is compared with DuckDB's columns only to find a misread: backslash-escaped quotes (a MySQL
    export) and a title above the header are DuckDB's to read, and are not refused."""
    _csv_lines(tmp_path / "a", "t", ["text,label", '"he said \\"hi\\", ok",positive', '"plain, text",negative'])
    _csv_lines(tmp_path / "b", "t", ["Survey export 2026", "", "text,label", '"a, b",positive', '"c d",negative'])
    assert data.query_local(tmp_path / "a", "SELECT * FROM t").values.tolist() == [
        ['he said "hi", ok', "positive"],
        ["plain, text", "negative"],
    ]
    assert data.query_local(tmp_path / "b", "SELECT * FROM t").values.tolist() == [
        ["a, b", "positive"],
        ["c d", "negative"],
    ]


def test_a_bad_csv_line_past_the_sniffed_sample_is_a_data_error_not_a_raw_one(params_factory, tmp_path):
    """DuckDB sniffs the first 20,480 lines; a bad line after them fails while the result streams, through Arrow."""
    lines = [f'"row {i} {"good" if i % 2 else "bad"}",{["negative", "positive"][i % 2]}' for i in range(30_000)]
    _csv_lines(tmp_path / "src", "t", ["text,label", *lines[:25_000], "a,b,c", *lines[25_000:]])
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT text, label FROM t"})
    p.evaluation.query = None
    with pytest.raises(DataError, match="query failed in DuckDB: .*Line: 25002 Expected Number of Columns: 2 Found: 3"):
        data.fetch_dataset(p, tmp_path / "wd")


def test_empty_files_are_refused_as_empty_and_empty_parts_are_skipped(params_factory, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "t.csv").write_bytes(b"")
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT text, label FROM t"})
    p.evaluation.query = None
    with pytest.raises(DataError, match=r"data.path: t.csv is empty \(0 bytes\)"):
        data.fetch_dataset(p, tmp_path / "wd")
    # A folder table whose first part is an empty partition: that part's missing header is not the table's.
    parts = tmp_path / "src2" / "t"
    _csv_lines(parts, "part-1", ["text,label", *GOOD_LINES])
    (parts / "part-0.csv").write_bytes(b"")
    p = _params(params_factory, tmp_path / "src2", **{"data.query": "SELECT text, label FROM t"})
    p.evaluation.query = None
    assert sum(data.fetch_dataset(p, tmp_path / "wd2").counts.values()) == 60
    (parts / "part-1.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"data.path: t/ \(all 2 files\) is empty \(0 bytes\)"):
        data.fetch_dataset(p, tmp_path / "wd3")


def test_folder_without_tables(params_factory, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \*.csv, \*.tsv, \*.parquet or \*.jsonl files"):
        data.fetch_dataset(_params(params_factory, tmp_path / "empty"), tmp_path / "wd")
    with pytest.raises(DataError, match="'.*nope' does not exist"):
        data.fetch_dataset(_params(params_factory, tmp_path / "nope"), tmp_path / "wd")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt' is not a folder .*, or be one"):
        data.fetch_dataset(_params(params_factory, tmp_path / "notes.txt"), tmp_path / "wd")


def test_files_that_are_not_tables_are_named_when_the_query_finds_no_table(params_factory, tmp_path):
    """A team's first guess is often the spreadsheet itself: the refusal names it, and DuckDB's offer of one of its own
    catalog names ('Did you mean "duckdb_views"?') is left out."""
    (tmp_path / "sheets").mkdir()
    (tmp_path / "sheets" / "survey.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"holds no .*; not read as tables: survey.xlsx \(save a spreadsheet as CSV"):
        data.fetch_dataset(_params(params_factory, tmp_path / "sheets"), tmp_path / "wd")
    _write(tmp_path / "sheets", "reviews", [{"text": "a", "label": "positive"}])
    p = _params(params_factory, tmp_path / "sheets", **{"data.query": "SELECT text, label FROM survey"})
    with pytest.raises(DataError) as e:
        data.fetch_dataset(p, tmp_path / "wd")
    assert "(tables available: reviews; not read as tables: survey.xlsx" in str(e.value)
    assert "Did you mean" not in str(e.value)


def test_data_path_may_be_the_table_file_itself(params_factory, tmp_path):
    rows = [
        {"text": f"row {i} {'good' if i % 2 else 'bad'}", "label": ["negative", "positive"][i % 2]} for i in range(80)
    ]
    _write(tmp_path / "src", "reviews", rows)
    p = _params(params_factory, tmp_path / "src" / "reviews.csv", **{"data.query": "SELECT text, label FROM reviews"})
    p.evaluation.query = None
    assert sum(data.fetch_dataset(p, tmp_path / "wd").counts.values()) == 80


def test_columns_are_found_whatever_their_letter_case_as_sql_names_are(params_factory, tmp_path):
    """`SELECT text, label` over a CSV headed `Text,Label` is valid SQL, yet DuckDB returns the header's spelling
    (and Athena lowercases every name): the columns are matched ignoring case; two that differ only in case are
    refused."""
    rows = [
        {"Text": f"row {i} {'good' if i % 2 else 'bad'}", "Label": ["negative", "positive"][i % 2]} for i in range(80)
    ]
    _write(tmp_path / "src", "reviews", rows)
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT text, label FROM reviews"})
    p.evaluation.query = None
    ds = data.fetch_dataset(p, tmp_path / "wd")
    assert sum(ds.counts.values()) == 80
    p = _params(
        params_factory, tmp_path / "src", **{"data.query": 'SELECT "Text", upper("Text") AS text, label FROM reviews'}
    )
    p.evaluation.query = None
    with pytest.raises(DataError, match="columns 'Text', 'text', one name to SQL.*data.text_column = 'text'"):
        data.fetch_dataset(p, tmp_path / "wd2")


def test_exported_tables_are_read_as_they_come(params_factory, tmp_path):
    """What warehouses and notebooks write: gzipped CSV, TSV, JSON lines, and a folder of Parquet parts with hive
    `key=value` folders and a _SUCCESS marker, each one table, all giving the same rows."""
    rows = pd.DataFrame(
        {"text": [f"row {i} {'good' if i % 2 else 'bad'}" for i in range(80)], "label": ["negative", "positive"] * 40}
    )
    src = tmp_path / "src"
    src.mkdir()
    rows.to_csv(src / "zipped.csv.gz", index=False, compression="gzip")
    rows.to_csv(src / "tabbed.tsv", index=False, sep="\t")
    rows.to_json(src / "lines.jsonl", orient="records", lines=True)
    for half, part in ((0, rows.iloc[:40]), (1, rows.iloc[40:])):
        (src / "parts" / f"half={half}").mkdir(parents=True)
        part.to_parquet(src / "parts" / f"half={half}" / f"part-0000{half}.parquet", index=False)
    (src / "parts" / "_SUCCESS").write_text("")
    fingerprints = set()
    for table in ("zipped", "tabbed", "lines", "parts"):
        p = _params(params_factory, src, **{"data.query": f"SELECT text, label FROM {table}"})
        p.evaluation.query = None
        ds = data.fetch_dataset(p, tmp_path / table)
        assert sum(ds.counts.values()) == 80, table
        fingerprints.add(ds.fingerprint)
    assert len(fingerprints) == 1  # the same rows, whatever the file
    p = _params(params_factory, src, **{"data.query": "SELECT text, label FROM parts WHERE half = 1"})
    p.evaluation.query = None
    assert sum(data.fetch_dataset(p, tmp_path / "hive").counts.values()) == 40  # the partition is a column


def test_only_the_tables_the_query_names_are_opened(params_factory, tmp_path):
    src = tmp_path / "src"
    _write(
        src,
        "t",
        [
            {"text": f"row {i} {'good' if i % 2 else 'bad'}", "label": ["negative", "positive"][i % 2]}
            for i in range(80)
        ],
    )
    (src / "old_export").mkdir()
    (src / "old_export" / "part.csv").write_bytes("text,label\ncaf\xe9,x\n".encode("latin-1"))  # not UTF-8
    p = _params(params_factory, src, **{"data.query": "SELECT text, label FROM T"})  # names are case-insensitive
    p.evaluation.query = None
    assert sum(data.fetch_dataset(p, tmp_path / "wd").counts.values()) == 80
    p.data.query = "SELECT text, label FROM old_export"
    with pytest.raises(DataError, match=r"data.path: old_export/part.csv cannot be read as a table: .*not utf-8"):
        data.fetch_dataset(p, tmp_path / "wd2")


def test_a_folder_table_of_two_kinds_or_two_tables_of_one_name_are_refused(params_factory, tmp_path):
    src = tmp_path / "src"
    (src / "mixed").mkdir(parents=True)
    pd.DataFrame({"text": ["a"], "label": ["x"]}).to_csv(src / "mixed" / "a.csv", index=False)
    pd.DataFrame({"text": ["a"], "label": ["x"]}).to_parquet(src / "mixed" / "b.parquet", index=False)
    with pytest.raises(DataError, match="folder 'mixed' mixes csv and parquet files"):
        data.fetch_dataset(_params(params_factory, src), tmp_path / "wd")
    (src / "mixed" / "b.parquet").unlink()
    pd.DataFrame({"text": ["a"], "label": ["x"]}).to_csv(src / "mixed.csv", index=False)
    with pytest.raises(DataError, match="two tables would be named 'mixed'"):
        data.fetch_dataset(_params(params_factory, src), tmp_path / "wd")
    (src / "mixed.csv").unlink()
    (tmp_path / "secret.csv").write_text("text,label\nkey,x\n")
    (src / "mixed" / "b.csv").symlink_to(tmp_path / "secret.csv")  # a part that is another host file
    with pytest.raises(DataError, match=r"mixed/b.csv links outside"):
        data.fetch_dataset(_params(params_factory, src), tmp_path / "wd")


def test_labels_from_the_data_that_differ_only_in_case_are_refused_unless_listed(params_factory, tmp_path):
    rows = [{"text": f"row {i} good", "label": "positive"} for i in range(40)]
    rows += [{"text": f"row {i} bad", "label": "negative"} for i in range(40)]
    rows[7]["label"] = "Positive "  # typed by hand: another case, and a space the fetch trims anyway
    _write(tmp_path / "src", "t", rows)
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT * FROM t", "data.labels": None})
    p.evaluation.query = None
    with pytest.raises(
        DataError, match="labels 'Positive', 'positive' differ only in letter case or surrounding space"
    ) as e:
        data.fetch_dataset(p, tmp_path / "wd")
    assert "lower(label)" in str(e.value) and "row 7" in str(e.value)
    assert not (tmp_path / "wd" / "data").exists()
    p.data.labels = ["Positive", "negative", "positive"]  # listed: kept apart on purpose
    assert data.fetch_dataset(p, tmp_path / "wd").labels == ["Positive", "negative", "positive"]


def test_a_label_with_a_spreadsheets_space_around_it_or_none_at_all_is_refused(params_factory, tmp_path):
    rows = [{"text": f"row {i} good", "label": "positive"} for i in range(40)]
    rows += [{"text": f"row {i} bad", "label": "negative"} for i in range(40)]
    rows[9]["label"] = "positive\u00a0"  # a no-break space from a spreadsheet cell: trim() keeps it
    rows[11]["label"] = "negative\t"
    _write(tmp_path / "src", "t", rows)
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT * FROM t", "data.labels": None})
    p.evaluation.query = None
    with pytest.raises(DataError, match=r"labels 'negative', 'negative\\t' differ only in letter case or surrounding"):
        data.fetch_dataset(p, tmp_path / "wd")
    rows[9]["label"] = rows[11]["label"] = "positive"
    rows[13]["label"] = '"  "'
    _write(tmp_path / "src", "t", rows)
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT text, trim(label, '\"') AS label FROM t"})
    p.evaluation.query = None
    with pytest.raises(DataError, match=r"1 row\(s\) have an empty label \(e.g. row 13\); filter them in the SQL"):
        data.fetch_dataset(p, tmp_path / "wd")


def test_an_evaluation_label_in_another_case_is_refused_with_the_training_spelling(params_factory, tmp_path):
    rows = [{"text": f"row {i} good", "label": "positive"} for i in range(40)]
    rows += [{"text": f"row {i} bad", "label": "negative"} for i in range(40)]
    _write(tmp_path / "src", "t", rows)
    _write(
        tmp_path / "src", "h", [{"text": "held out good", "label": "POSITIVE"}, {"text": "bad", "label": "negative"}]
    )
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT * FROM t", "data.labels": None})
    p.evaluation.query = "SELECT * FROM h"
    with pytest.raises(DataError, match="'POSITIVE' is 'positive' there: labels are case-sensitive"):
        data.fetch_dataset(p, tmp_path / "wd")


def test_a_label_column_of_ids_is_refused_and_many_rare_classes_are_warned_in_one_line(params_factory, tmp_path):
    """`SELECT text, comment_id AS label`: a class per row. Labels from the data that are mostly rare are refused
    before anything trains; listed in data.labels they are meant, and their warning is one line, not one per class."""
    rows = [{"text": f"comment {i} on pay", "label": f"id{i:03d}"} for i in range(200)]
    rows += [{"text": f"more words {i}", "label": ["negative", "positive"][i % 2]} for i in range(100)]
    _write(tmp_path / "src", "t", rows)
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT text, label FROM t", "data.labels": None})
    p.evaluation.query = None
    with pytest.raises(
        DataError,
        match=r"200 of the 202 labels taken from the data have fewer than 3 rows each "
        r"\(e.g. 'id000' \(1\), 'id001' \(1\), .*is the label column an ID or free text\?",
    ):
        data.fetch_dataset(p, tmp_path / "wd")
    assert not (tmp_path / "wd" / "data").exists()
    labels = ["negative", "positive", *(f"id{i:03d}" for i in range(200))]
    p = _params(params_factory, tmp_path / "src", **{"data.query": "SELECT text, label FROM t", "data.labels": labels})
    p.evaluation.query = None
    ds = data.fetch_dataset(p, tmp_path / "wd2")
    rare = [w for w in ds.warnings if "fewer than 3 rows" in w or "has only" in w]
    assert rare == [
        "data.query: 200 classes have fewer than 3 rows each (e.g. 'id000' (1), 'id001' (1), 'id002' (1), 'id003' "
        "(1), 'id004' (1)), too few to be in the train, validation and test splits; their F1 (likely 0) is averaged "
        "into macro-F1"
    ]


def test_training_rows_the_evaluation_set_also_holds_are_left_out_so_it_stays_held_out(params_factory, tmp_path):
    """A team's table often holds its own human-labelled sample: evaluated on rows it trained on, a model would look
    better than it is, and the champion gate would trust that."""
    rows = [
        {"text": f"row {i} {'good' if i % 2 else 'bad'}", "label": ["negative", "positive"][i % 2]} for i in range(300)
    ]
    _write(tmp_path / "src", "t", rows)
    _write(tmp_path / "src", "labelled", rows[:40])
    p = _params(
        params_factory,
        tmp_path / "src",
        **{"data.query": "SELECT text, label FROM t", "evaluation.query": "SELECT text, label FROM labelled"},
    )
    ds = data.fetch_dataset(p, tmp_path / "wd")
    assert ds.counts["evaluation"] == 40 and sum(ds.counts.values()) == 300
    assert "evaluation.query: 40 of data.query's 300 rows have a text the evaluation set also holds" in ds.warnings[0]
    snap = data.read_snapshot(ds.snapshot_path)
    held = set(snap.loc[snap["split"] == "evaluation", "text"])
    assert not held & set(snap.loc[snap["split"] != "evaluation", "text"])
    p.evaluation.query = "SELECT text, label FROM t"
    with pytest.raises(DataError, match="every one of data.query's 300 rows has a text the evaluation set also holds"):
        data.fetch_dataset(p, tmp_path / "wd2")


def test_conflicting_duplicates_are_warned(params_factory, tmp_path):
    rows = [{"text": f"row {i} good", "label": "positive"} for i in range(40)]
    rows += [{"text": f"row {i} bad", "label": "negative"} for i in range(40)]
    rows += [{"text": "same words", "label": "positive"}, {"text": "same words", "label": "negative"}]
    _write(tmp_path / "src", "t", rows)
    p = _params(
        params_factory, tmp_path / "src", **{"data.query": "SELECT * FROM t", "data.labels": ["negative", "positive"]}
    )
    p.evaluation.query = None
    ds = data.fetch_dataset(p, tmp_path / "wd")
    assert any("conflicting labels" in w for w in ds.warnings)


def test_athena_source_through_awswrangler(aws, params_factory, tmp_path):
    """The production twin: same SQL through awswrangler against moto's Athena (canned result)."""
    import boto3
    import requests

    boto3.client("s3").create_bucket(Bucket="athena-out")
    rows = [{"Data": [{"VarCharValue": "text"}, {"VarCharValue": "label"}]}]
    for i in range(60):
        lab = ["negative", "neutral", "positive"][i % 3]
        rows.append({"Data": [{"VarCharValue": f"{lab} comment {i}"}, {"VarCharValue": lab}]})
    col = [
        {
            "Name": n,
            "Type": "varchar",
            "CatalogName": "hive",
            "SchemaName": "",
            "TableName": "",
            "Nullable": "UNKNOWN",
            "Precision": 0,
            "Scale": 0,
            "CaseSensitive": True,
        }
        for n in ("text", "label")
    ]
    requests.post(
        f"{aws}/moto-api/static/athena/query-results",
        json={"results": [{"rows": rows, "column_info": col}]},
        timeout=10,
    )
    p = params_factory(
        **{
            "data.source": "athena",
            "data.athena_s3_output": "s3://athena-out/q/",
            "data.query": "SELECT text, label FROM comments",
        }
    )
    p.evaluation.query = None
    ds = data.fetch_dataset(p, tmp_path / "wd")
    assert sum(ds.counts.values()) == 60 and ds.source == "athena"
    assert ds.athena["s3_output"] == "s3://athena-out/q/"
