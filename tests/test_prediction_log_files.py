"""What happens to prediction-log files once finished: retention by age and by total size
(--prediction-log-max-age, --prediction-log-max-bytes) and upload to S3-compatible storage
(--prediction-log-upload-url), against moto's real S3 server, including a bucket that is down at
first and a restart that sends only what was not uploaded."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from conftest import Keel
from mlflow_server import free_port
from test_parquet_log import NAME, infer, logged, repo  # noqa: F401 (repo is a fixture)

BUCKET = "keel-log"
PREFIX = "prod/keel"


def metric(keel: Keel, name: str, **labels) -> float:
    text = requests.get(f"http://{keel.metrics}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not exported")


def wait_for(what: str, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def finished(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.glob("*/*.parquet") if NAME.match(p.name))


def folder_bytes(log_dir: Path) -> int:
    return sum(p.stat().st_size for p in log_dir.glob("*/*") if p.is_file())


def test_size_retention_keeps_the_newest_files_under_the_limit(repo, tmp_path):
    log_dir = tmp_path / "log"
    limit = 60_000
    keel = Keel(repo, "--prediction-log-dir", str(log_dir), "--prediction-log-rotate", "0.3",
                "--prediction-log-max-bytes", str(limit))
    try:
        for i in range(60):
            infer(keel, f"size-{i}", 20, i)
            time.sleep(0.05)
        wait_for("files deleted by size", lambda: metric(
            keel, "keel_prediction_log_files_deleted_total", reason="size") > 0)
        time.sleep(1.5)  # a sweep after the last finished file
        assert folder_bytes(log_dir) <= limit, folder_bytes(log_dir)
        assert metric(keel, "keel_prediction_log_disk_bytes") <= limit
        assert metric(keel, "keel_prediction_log_files_deleted_total", reason="age") == 0
    finally:
        assert keel.stop() == 0
    # What is left is the newest rows, readable.
    df = logged(log_dir)
    assert 0 < len(df) < 60 * 20
    assert "size-59" in set(df["request_id"])
    assert "size-0" not in set(df["request_id"])


def test_age_retention_deletes_files_whose_newest_row_is_older(repo, tmp_path):
    log_dir = tmp_path / "log"
    keel = Keel(repo, "--prediction-log-dir", str(log_dir), "--prediction-log-rotate", "0.3",
                "--prediction-log-max-age", "2")
    try:
        infer(keel, "old", 5, 1)
        old = wait_for("the first file", lambda: finished(log_dir))
        wait_for("its deletion", lambda: not any(p.exists() for p in old), timeout=10)
        assert metric(keel, "keel_prediction_log_files_deleted_total", reason="age") >= 1
        infer(keel, "new", 5, 2)
        assert wait_for("the new file", lambda: finished(log_dir))
    finally:
        assert keel.stop() == 0
    assert set(logged(log_dir)["request_id"]) == {"new"}


def test_retention_and_upload_flags_need_a_log_dir_and_a_valid_url(repo):
    for args, message in [
        (["--prediction-log-max-bytes", "100"], "--prediction-log-max-bytes needs --prediction-log-dir"),
        (["--prediction-log-upload-url", "s3://b"], "--prediction-log-upload-url needs --prediction-log-dir"),
        (["--prediction-log-dir", "/tmp/x", "--prediction-log-upload-url", "gs://b"], "expected s3://bucket"),
    ]:
        run = subprocess.run([os.environ.get("KEEL_BIN", "target/debug/keel"), "serve", "--model-repository",
                              str(repo), "--http-addr", "127.0.0.1:0", *args],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and message in run.stderr, (args, run.stderr)


class Moto:
    """moto's S3 server on 127.0.0.1 (started late, stopped and restarted by the tests)."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self):
        moto_server = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("moto", self.up)
        self.s3().create_bucket(Bucket=BUCKET)

    def up(self) -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(self.url, timeout=1).status_code < 500
        return False

    def s3(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def objects(self) -> dict[str, bytes]:
        s3 = self.s3()
        listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def moto():
    server = Moto(free_port())
    yield server
    server.stop()


@contextlib.contextmanager
def aws_env(moto: Moto):
    env = {"AWS_ENDPOINT_URL": moto.url, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_finished_files_are_uploaded_with_retries_and_resumed_after_a_restart(repo, tmp_path, moto):
    log_dir = tmp_path / "log"
    args = ["--prediction-log-dir", str(log_dir), "--prediction-log-rotate", "0.3",
            "--prediction-log-upload-url", f"s3://{BUCKET}/{PREFIX}/"]
    with aws_env(moto):
        keel = Keel(repo, *args)
    try:
        # The bucket is down: files finish locally, uploads fail and are retried (counted).
        for i in range(5):
            infer(keel, f"down-{i}", 3, i)
        wait_for("a failed upload", lambda: metric(keel, "keel_prediction_log_uploads_total", outcome="error") > 0)
        assert metric(keel, "keel_prediction_log_upload_pending_files") >= 1
        moto.start()
        for i in range(5):
            infer(keel, f"up-{i}", 3, i)
        time.sleep(0.6)
        wait_for("every finished file uploaded",
                 lambda: finished(log_dir) and metric(keel, "keel_prediction_log_upload_pending_files") == 0,
                 timeout=60)
        local = {f"{PREFIX}/{p.parent.name}/{p.name}": p.read_bytes() for p in finished(log_dir)}
        assert moto.objects() == local
        assert metric(keel, "keel_prediction_log_uploads_total", outcome="ok") == len(local)
        assert metric(keel, "keel_prediction_log_uploaded_bytes_total") == sum(map(len, local.values()))
    finally:
        assert keel.stop() == 0
    # SIGTERM finished the last file and uploaded it before exiting.
    objects = moto.objects()
    assert set(objects) == {f"{PREFIX}/{p.parent.name}/{p.name}" for p in finished(log_dir)}
    uploaded_rows = sum(pq.read_metadata(pa.BufferReader(b)).num_rows
                        for k, b in objects.items() if "/predictions-" in k)
    assert uploaded_rows == 30

    # Files finished while the bucket was away are sent after the next start, and only those.
    moto.stop()
    with aws_env(moto):
        keel = Keel(repo, *args)
    try:
        infer(keel, "offline", 3, 9)
        time.sleep(1)
    finally:
        keel.proc.terminate()
        assert keel.proc.wait(timeout=60) == 0
    before = set(objects)
    missing = {f"{PREFIX}/{p.parent.name}/{p.name}" for p in finished(log_dir)} - before
    assert missing, "a file finished while the bucket was down"
    moto.start()  # a fresh moto: empty bucket
    with aws_env(moto):
        keel = Keel(repo, *args)
    try:
        wait_for("the files not uploaded before",
                 lambda: metric(keel, "keel_prediction_log_upload_pending_files") == 0
                 and metric(keel, "keel_prediction_log_uploads_total", outcome="ok") >= len(missing))
        assert set(moto.objects()) == missing
    finally:
        assert keel.stop() == 0
