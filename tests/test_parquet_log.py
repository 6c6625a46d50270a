"""The prediction log (monitor/src/parquet_log) as a retraining job sees it: files written by
monitor/examples/write_parquet_log.rs, read with pandas and pyarrow. Checks file names against
their time ranges, values, nulls, dtypes, row groups, and the join of feedback to predictions.
Then `keel serve --prediction-log-dir` itself: after `kill -9` and a restart every file is
readable and holds every row logged up to the crash bound; after SIGTERM every row logged before
it is in a finished file."""

import re
import shutil
import subprocess
import time
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


def test_every_column_chunk_is_zstd_compressed(model_dir):
    for path in files(model_dir, "predictions") + files(model_dir, "feedback"):
        meta = pq.ParquetFile(path).metadata
        codecs = {meta.row_group(g).column(c).compression
                  for g in range(meta.num_row_groups) for c in range(meta.num_columns)}
        assert codecs == {"ZSTD"}, (path.name, codecs)


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


# --- keel serve's prediction log under crashes and shutdown -------------------------------------
#
# The bound on what a `kill -9` may lose: rows are written as a Parquet row group (and listed in the
# file's row-group index) once they have waited 1 s in memory, checked every 250 ms, after at most
# 20 ms in the queue; so every row answered more than CRASH_BOUND_S before the kill is on disk and
# is recovered on the next start. Rows of the last CRASH_BOUND_S may be lost (not counted: the
# process is gone).

CRASH_BOUND_S = 1.5


def serve(repo: Path, log_dir: Path):
    from conftest import Keel
    return Keel(repo, "--prediction-log-dir", str(log_dir))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    (repo / "breast-cancer").mkdir()
    shutil.copytree(ROOT / "models/breast-cancer/1", repo / "breast-cancer/1")
    (repo / "breast-cancer/model.toml").write_text("")
    return repo


def infer(keel, request_id: str, rows: int, seed: int) -> None:
    import requests
    data = [seed + r * 0.5 + c * 0.01 for r in range(rows) for c in range(30)]
    body = {"id": request_id,
            "inputs": [{"name": "input", "shape": [rows, 30], "datatype": "FP32", "data": data}]}
    reply = requests.post(f"http://{keel.http}/v2/models/breast-cancer/infer", json=body, timeout=30)
    assert reply.status_code == 200, reply.text


def logged(log_dir: Path) -> pd.DataFrame:
    """Every row of every finished prediction file under log_dir: each file must be readable."""
    frames = []
    for path in sorted(log_dir.glob("*/predictions-*.parquet")):
        assert NAME.match(path.name), path.name
        table = pq.read_table(path)
        frames.append(table.to_pandas())
    if not frames:
        return pd.DataFrame(columns=["request_id", "row"])
    return pd.concat(frames, ignore_index=True)


def leftovers(log_dir: Path) -> list[str]:
    return sorted(p.name for p in log_dir.glob("*/.*"))


def check_rows(df: pd.DataFrame, prefix: str, requests_sent: int, rows: int) -> None:
    """Every row of requests prefix-0 .. prefix-(n-1) is there once, with its inputs."""
    mine = df[df["request_id"].str.startswith(prefix + "-")]
    assert len(mine) == requests_sent * rows, (len(mine), requests_sent * rows)
    assert not mine.duplicated(["request_id", "row"]).any()
    for i in (0, requests_sent - 1):
        one = mine[mine["request_id"] == f"{prefix}-{i}"].sort_values("row")
        assert list(one["row"]) == list(range(rows))
        assert one["input_3"].tolist() == pytest.approx([i + r * 0.5 + 0.03 for r in range(rows)], rel=1e-6)


def test_kill_9_loses_at_most_the_last_flush_and_partial_files_are_recovered(repo, tmp_path):
    log_dir = tmp_path / "log"
    keel = serve(repo, log_dir)
    for i in range(40):
        infer(keel, f"early-{i}", 5, i)
    time.sleep(CRASH_BOUND_S + 1.0)
    for i in range(10):
        infer(keel, f"late-{i}", 5, i)
    keel.proc.kill()
    keel.proc.wait(timeout=10)
    # Nothing finished yet (files rotate after 5 minutes): only the partial file and its index.
    assert not list(log_dir.glob("*/predictions-*.parquet"))
    partial = leftovers(log_dir)
    assert any(n.endswith(".parquet.partial") for n in partial), partial
    assert any(n.endswith(".parquet.partial.idx") for n in partial), partial

    keel = serve(repo, log_dir)
    try:
        assert any("recovered an unfinished file" in line for line in keel.log), "".join(keel.log)
        df = logged(log_dir)
        check_rows(df, "early", 40, 5)
        late = df[df["request_id"].str.startswith("late-")]
        assert len(late) <= 50 and not late.duplicated(["request_id", "row"]).any()
        assert leftovers(log_dir) == [], "recovered files keep no partial name or index"
        assert pq.read_metadata(sorted(log_dir.glob("*/predictions-*.parquet"))[0]).metadata[
            b"keel.recovered"] == b"true"
    finally:
        assert keel.stop() == 0


def test_sigterm_finishes_the_file_with_every_row_logged_before(repo, tmp_path):
    log_dir = tmp_path / "log"
    keel = serve(repo, log_dir)
    for i in range(30):
        infer(keel, f"term-{i}", 4, i)
    started = time.monotonic()
    keel.proc.terminate()
    assert keel.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 10
    # Finished by the shutdown itself, not by a recovery.
    assert leftovers(log_dir) == []
    df = logged(log_dir)
    check_rows(df, "term", 30, 4)
    assert all(b"keel.recovered" not in (pq.read_metadata(p).metadata or {})
               for p in log_dir.glob("*/predictions-*.parquet"))
    # And after a restart, the same rows, nothing more to recover.
    keel = serve(repo, log_dir)
    try:
        assert not any("recovered" in line for line in keel.log), "".join(keel.log)
        check_rows(logged(log_dir), "term", 30, 4)
    finally:
        assert keel.stop() == 0
