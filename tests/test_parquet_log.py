"""The prediction log (monitor/src/parquet_log) as a retraining job sees it: files written by
monitor/examples/write_parquet_log.rs, read with pandas and pyarrow. Checks file names against
their time ranges, values, nulls, dtypes, row groups, and the join of feedback to predictions."""

import re
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
START_MS = 1_700_000_000_000
CITIES = ["paris", "lima", "oslo"]
NAME = re.compile(r"^(predictions|feedback)-(\d{13})-(\d{13})-(\d+)\.parquet$")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Runs the example (cargo honours CARGO_TARGET_DIR) and returns the model's folder."""
    out = tmp_path_factory.mktemp("parquet-log")
    run = subprocess.run(
        ["cargo", "run", "-q", "-p", "keel-monitor", "--example", "write_parquet_log", "--", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert run.returncode == 0, run.stderr
    assert "files=4 prediction_rows=25 feedback_rows=9 rows_with_nulls=8 mismatched_values=4" in run.stdout
    return out / "fraud"


def expected(i: int) -> dict:
    """Row i as the example writes it."""
    p = (i % 10) / 10
    return {
        "version": 1 if i < 12 else 2,
        "request_id": f"req-{i // 2}",
        "row": i % 2,
        "timestamp_ms": START_MS + i * 1000,
        "amount": None if i % 7 == 3 else i * 1.5,
        "features_0": float(i), "features_1": 2.0 * i, "features_2": 3.0 * i,
        "city": None if i % 5 == 4 else CITIES[i % 3],
        "device": None if i < 20 else ("ios" if i % 2 == 0 else "android"),
        "label": "fraud" if i % 4 == 0 else "ok",
        "probabilities_0": p, "probabilities_1": 1.0 - p,
    }


def files(model_dir: Path, kind: str) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.name.startswith(kind + "-"))


def predictions(model_dir: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in files(model_dir, "predictions")]
    return pd.concat(frames, ignore_index=True).sort_values("timestamp_ms", ignore_index=True)


def test_names_give_each_file_its_time_range(model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    assert all(NAME.match(n) for n in names), names
    preds = files(model_dir, "predictions")
    # Rotated after row 10 (age) and at row 20 (a new tensor); row groups hold 4 rows.
    assert [len(pd.read_parquet(p)) for p in preds] == [10, 10, 5]
    assert [pq.ParquetFile(p).num_row_groups for p in preds] == [3, 3, 2]
    for path in preds + files(model_dir, "feedback"):
        _, first, last, _ = NAME.match(path.name).groups()
        ts = pd.read_parquet(path, columns=["timestamp_ms"])["timestamp_ms"]
        assert (ts.min(), ts.max()) == (int(first), int(last)), path.name


def test_values_nulls_and_dtypes(model_dir):
    df = predictions(model_dir)
    assert len(df) == 25
    assert (df["model"] == "fraud").all()
    for i, row in df.iterrows():
        for column, value in expected(i).items():
            got = row[column]
            if value is None:
                assert pd.isna(got), (i, column, got)
            elif isinstance(value, float):
                assert got == pytest.approx(value), (i, column)
            else:
                assert got == value, (i, column, got)
    assert df["amount"].isna().sum() == 4 and df["city"].isna().sum() == 5

    last = pd.read_parquet(files(model_dir, "predictions")[-1])
    assert str(last["version"].dtype) == "int64"
    assert str(last["row"].dtype) == "uint32"
    assert str(last["timestamp_ms"].dtype) == "int64"
    for column in ["amount", "features_0", "probabilities_1"]:
        assert str(last[column].dtype) == "float64", column
    for column in ["model", "request_id", "city", "label", "device"]:
        assert pd.api.types.is_string_dtype(last[column]), column

    schema = pq.read_schema(files(model_dir, "predictions")[-1])
    assert schema.field("model").type == pa.string() and not schema.field("model").nullable
    assert schema.field("row").type == pa.uint32() and not schema.field("row").nullable
    assert schema.field("amount").type == pa.float64() and schema.field("amount").nullable
    assert schema.field("device").type == pa.string() and schema.field("device").nullable


def test_feedback_joins_predictions_by_request_and_row(model_dir):
    (path,) = files(model_dir, "feedback")
    feedback = pd.read_parquet(path)
    assert list(feedback.columns) == ["model", "request_id", "row", "timestamp_ms", "truth_value", "truth_label"]
    joined = feedback.merge(predictions(model_dir), on=["request_id", "row"], how="left",
                            suffixes=("_feedback", ""), validate="one_to_one")
    assert len(joined) == 9 and joined["timestamp_ms"].notna().all()
    rows = (joined["timestamp_ms"] - START_MS) // 1000
    assert list(rows) == list(range(0, 25, 3))
    labelled = joined[joined["truth_label"].notna()]
    assert (labelled["truth_label"] == labelled["label"]).all() and len(labelled) == 8
    numeric = joined[joined["truth_value"].notna()]
    assert list(numeric["truth_value"]) == [0.5] and numeric["truth_label"].isna().all()
