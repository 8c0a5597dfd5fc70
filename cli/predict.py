"""`trainkite predict`'s work: scoring texts or a CSV with a fetched, verified model.

A scored CSV is streamed (bounded memory whatever the input's size) and read as training reads a table: its
delimiter from the header line, the text column matched ignoring case. It is written in the input's delimiter to a
temp file beside `--output` and renamed into place only when every row is scored, so `--output` may equal `--input`
and a failure leaves whatever was there before. Where `--output` goes is checked before the model loads.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from trainkite.columns import header_splits, same_name
from trainkite.errors import IntegrityError, TrainkiteError, UserInputError

# Rows scored per chunk: the memory bound of a streamed --input (the texts, their features, their scores).
CHUNK_ROWS = 5000
PREDICTED_PREFIX = "predicted_"


def check_finite_predictions(preds: list[dict], model_id: str) -> None:
    """NaN is not JSON and not a probability: a model whose weights hold NaN/inf is refused, not printed."""
    for p in preds:
        if not all(math.isfinite(v) for v in p["scores"].values()):
            raise IntegrityError(
                f"model {model_id} produced non-finite scores (NaN/inf): its weights are broken "
                "(a diverged training published before the divergence guard); retrain it"
            )


def check_output(output: Path) -> None:
    """Refuse an --output that cannot be written, before anything is scored."""
    parent = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise UserInputError(f"--output {str(output)!r} is a folder; give a file path")
    if not parent.is_dir():
        raise UserInputError(f"--output {str(output)!r}: folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"--output {str(output)!r}: folder {str(parent)!r} is not writable")
    if output.exists() and not os.access(output, os.W_OK):
        raise UserInputError(f"--output {str(output)!r} exists and is not writable")


def output_columns(input_columns: list[str], labels: list[str]) -> dict[str, str]:
    """Prediction field -> its column name; one that an input column already has becomes `predicted_<name>`,
    so the input (a `label` column of ground truth, say) is written back untouched. Names are compared ignoring case,
    as SQL compares them: a `Label` column and a new `label` would be one column to whoever queries the output."""
    taken = {c.lower() for c in input_columns}
    out = {}
    for name in ["label", "model_id", *(f"score_{lab}" for lab in labels)]:
        col = name
        while col.lower() in taken:
            col = PREDICTED_PREFIX + col
        taken.add(col.lower())
        out[name] = col
    return out


# Table files training reads that --input does not, by name: refused as what they are, not as a CSV without a header.
NOT_CSV = {".parquet": "Parquet", ".jsonl": "JSON lines", ".ndjson": "JSON lines", ".jsonl.gz": "JSON lines",
           ".ndjson.gz": "JSON lines", ".json": "JSON"}  # fmt: skip


def _header(input_csv: Path, text_column: str) -> tuple[str, str]:
    """(delimiter, column) of --input's text column, read from its header line as training reads a table: split at
    ',' (else ';', tab or '|'), the column named `text_column` exactly, else the one that matches ignoring case
    (the SQL that trained on the same file found it so)."""
    kind = next((name for suffix, name in NOT_CSV.items() if input_csv.name.lower().endswith(suffix)), None)
    if kind is not None:
        raise UserInputError(
            f"--input {input_csv.name!r} is a {kind} file: --input reads CSV or TSV (a header line, then a row per "
            "line); write the texts to a CSV first (e.g. duckdb -c \"COPY (SELECT * FROM 'x') TO 'x.csv'\")"
        )
    with open(input_csv, encoding="utf-8-sig", newline="") as f:
        line = f.readline()
    if not line.strip():
        raise UserInputError(f"--input {str(input_csv)!r} is empty: no header row")
    for delim, names in header_splits(line):
        if text_column in names:
            return delim, text_column
        folded = same_name(names, text_column)
        if len(folded) == 1:
            return delim, folded[0]
    names = next(header_splits(line))[1]
    raise UserInputError(f"--input has no column {text_column!r} (columns: {', '.join(names)}); use --text-column")


def _chunks(input_csv: Path, text_column: str) -> Iterator[tuple[str, str, object]]:
    """(delimiter, text column, chunk) of --input, CHUNK_ROWS rows at a time."""
    import pandas as pd

    try:
        delim, column = _header(input_csv, text_column)
        reader = pd.read_csv(
            input_csv, sep=delim, keep_default_na=False, dtype=str, chunksize=CHUNK_ROWS, encoding="utf-8-sig"
        )
        with reader:
            for chunk in reader:
                yield delim, column, chunk
    except pd.errors.EmptyDataError:
        raise UserInputError(f"--input {str(input_csv)!r} is empty: no header row") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserInputError(f"--input {str(input_csv)!r} cannot be read as CSV: {e}") from None


def score_csv(
    predictor, input_csv: Path, output_csv: Path, text_column: str, on_progress: Callable[[int], None] | None = None
) -> dict:
    """Score `input_csv` into `output_csv` atomically: {"rows", "columns"}; `on_progress(rows so far)`."""
    fd, tmp = tempfile.mkstemp(
        dir=output_csv.parent if str(output_csv.parent) else ".", prefix=f".{output_csv.name}.", suffix=".part"
    )
    rows, cols = 0, None
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
            for delim, column, chunk in _chunks(input_csv, text_column):
                if cols is None:
                    cols = output_columns([str(c) for c in chunk.columns], predictor.labels)
                preds = predictor.predict(chunk[column].tolist()) if len(chunk) else []
                check_finite_predictions(preds, predictor.model_id)
                chunk[cols["label"]] = [p["label"] for p in preds]
                chunk[cols["model_id"]] = predictor.model_id
                for lab in predictor.labels:
                    chunk[cols[f"score_{lab}"]] = [p["scores"][lab] for p in preds]
                chunk.to_csv(out, index=False, header=rows == 0, sep=delim)  # the input's own layout, extended
                rows += len(chunk)
                if on_progress:
                    on_progress(rows)
            out.flush()
            os.fsync(out.fileno())
        if cols is None:
            raise UserInputError(f"--input {str(input_csv)!r} has a header but no rows")
        if output_csv.exists():
            os.chmod(tmp, output_csv.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, output_csv)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise TrainkiteError(
            f"writing --output {str(output_csv)!r} failed: {e.strerror or e}; "
            "nothing was written (an existing file is unchanged)"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"rows": rows, "columns": cols}


def progress_printer(stream=None) -> Callable[[int], None]:
    """One stderr line per chunk: rows scored so far (a CSV's row count is unknown until it is read)."""
    stream = stream or sys.stderr

    def show(rows: int) -> None:
        print(f"scored {rows} rows", file=stream, flush=True)

    return show
