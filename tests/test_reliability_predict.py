"""`trainkite predict --input/--output` as a user runs it: input columns kept, atomic output, streamed input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.fixtures_models import copy_model, trained_model_dir  # noqa: F401
from cli.predict import CHUNK_ROWS, output_columns


@pytest.fixture(scope="module")
def store(trained_model_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("predict") / "store"
    copy_model(trained_model_dir, root, "p-1")
    return root


def _predict(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "predict", "p-1", "--root", str(store), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRAINKITE_HOME": str(store.parent / "home")},
    )


def test_prediction_columns_never_overwrite_input_columns():
    cols = output_columns(["id", "text", "label", "predicted_label"], ["a", "b"])
    assert cols == {
        "label": "predicted_predicted_label",
        "model_id": "model_id",
        "score_a": "score_a",
        "score_b": "score_b",
    }


def test_prediction_columns_differ_from_input_columns_ignoring_case_as_sql_does():
    assert output_columns(["Text", "Label", "Model_ID"], ["a"])["label"] == "predicted_label"
    assert output_columns(["Text", "Label", "Model_ID"], ["a"])["model_id"] == "predicted_model_id"


def test_a_table_that_trains_is_scored_in_its_own_layout(store, tmp_path):
    """A semicolon CSV headed `Text;Label` trains (DuckDB sniffs the delimiter; `SELECT text` finds `Text`): scored
    with the default --text-column, it is read and written back with its semicolons."""
    src, dst = tmp_path / "eu.csv", tmp_path / "eu-out.csv"
    src.write_text('Text;Label\n"Great team; fair pay";positive\nAwful hours, no breaks;negative\n')
    out = _predict(store, "--input", str(src), "--output", str(dst), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    df = pd.read_csv(dst, sep=";", keep_default_na=False, dtype=str)
    assert list(df.columns[:4]) == ["Text", "Label", "predicted_label", "model_id"]
    assert list(df["Text"]) == ["Great team; fair pay", "Awful hours, no breaks"]
    assert set(df["predicted_label"]) <= {"negative", "neutral", "positive"}
    missing = _predict(store, "--input", str(src), "--output", str(dst), "--text-column", "comment")
    assert missing.returncode == 2 and "--input has no column 'comment' (columns: Text;Label)" in missing.stderr
    (tmp_path / "eu.parquet").write_bytes(b"PAR1")
    parquet = _predict(store, "--input", str(tmp_path / "eu.parquet"), "--output", str(dst))
    assert (
        parquet.returncode == 2 and "--input 'eu.parquet' is a Parquet file: --input reads CSV or TSV" in parquet.stderr
    )


def test_ground_truth_survives_scoring_in_place(store, tmp_path):
    src = tmp_path / "truth.csv"
    pd.DataFrame(
        {
            "text": ["Great team, fair pay", "line one\nline two, with a comma", "Awful hours"],
            "label": ["positive", "neutral", "negative"],
        }
    ).to_csv(src, index=False)
    before = pd.read_csv(src, keep_default_na=False, dtype=str)
    out = _predict(store, "--input", str(src), "--output", str(src), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["rows"] == 3 and result["columns"]["label"] == "predicted_label"
    after = pd.read_csv(src, keep_default_na=False, dtype=str)
    assert list(after.columns[:2]) == ["text", "label"] and "predicted_label" in after.columns
    pd.testing.assert_frame_equal(after[["text", "label"]], before)  # truth and quoted newlines intact
    assert set(after["predicted_label"]) <= {"negative", "neutral", "positive"}
    assert not list(tmp_path.glob(".*.part")), "no temp file left"


def test_an_unwritable_output_is_refused_before_scoring(store, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text\nhello\n")
    out = _predict(store, "--input", str(src), "--output", str(tmp_path / "missing" / "out.csv"))
    assert out.returncode == 2 and "does not exist; create it first" in out.stderr
    assert "scored" not in out.stderr and "Traceback" not in out.stderr


def test_a_failure_mid_stream_leaves_the_old_output_untouched(store, tmp_path):
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    good = "".join(f"text number {i}\n" for i in range(CHUNK_ROWS + 10)).encode()
    src.write_bytes(b"text\n" + good + "caf\xe9 latin-1\n".encode("latin-1"))
    dst.write_text("the previous output\n")
    out = _predict(store, "--input", str(src), "--output", str(dst), "--json")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot be read as CSV" in json.loads(out.stdout)["error"]
    assert dst.read_text() == "the previous output\n"
    assert not list(tmp_path.glob(".*.part"))


def test_a_large_input_is_streamed_with_progress(store, tmp_path):
    src, dst = tmp_path / "big.csv", tmp_path / "big-out.csv"
    n = 2 * CHUNK_ROWS + 123
    src.write_text("id,text\n" + "".join(f"{i},review {i}: the pay is fair and the team kind\n" for i in range(n)))
    out = _predict(store, "--input", str(src), "--output", str(dst))
    assert out.returncode == 0, out.stderr[-2000:]
    progress = [line for line in out.stderr.splitlines() if line.startswith("scored ")]
    assert progress == [f"scored {CHUNK_ROWS} rows", f"scored {2 * CHUNK_ROWS} rows", f"scored {n} rows"]
    df = pd.read_csv(dst)
    assert len(df) == n and list(df["id"]) == list(range(n)) and (df["model_id"] == "p-1").all()
