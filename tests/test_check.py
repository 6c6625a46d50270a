"""`keel check REPO`: validates a model repository without serving it (the MLflow case is in
test_mlflow_reload.py, next to its registry)."""

import hashlib
import json
import shutil
import subprocess

from conftest import KEEL_BIN, ROOT, build_repository


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KEEL_BIN, "check", *args], capture_output=True, text=True, timeout=300)


def test_the_example_repository_passes():
    done = check(str(ROOT / "models"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
    for model in ["breast-cancer", "breast-cancer-gbt"]:
        assert model in done.stdout
    # The example models carry baselines; the report says what they monitor.
    assert "baseline.json: 30 features" in done.stdout


def test_the_test_repository_passes_on_both_backends(tmp_path):
    repo = build_repository(tmp_path / "repo")
    report = json.loads(check(str(repo), "--json").stdout)
    assert {m["model"] for m in report["models"]} >= {"datatypes", "datatypes-tract", "breast-cancer-tract"}
    backends = {m["model"]: {v["backend"] for v in m["versions"]} for m in report["models"]}
    assert backends["datatypes-tract"] == {"tract"}
    assert backends["datatypes"] == {"onnxruntime"}
    assert all(v["error"] is None for m in report["models"] for v in m["versions"])


def broken_repository(tmp_path):
    """One model per kind of mistake a publisher makes, plus one good model."""
    repo = tmp_path / "repo"
    good = ROOT / "models/breast-cancer"
    shutil.copytree(good, repo / "good")

    shutil.copytree(good, repo / "bad-toml")
    (repo / "bad-toml/model.toml").write_text("max_batch_size = 8\nbatching = true\n")

    (repo / "not-onnx/1").mkdir(parents=True)
    (repo / "not-onnx/1/model.onnx").write_bytes(b"this is not a protobuf")

    shutil.copytree(good, repo / "bad-baseline")
    baseline = json.loads((good / "1/baseline.json").read_text())
    baseline["features"][0]["tensor"] = "no_such_input"
    (repo / "bad-baseline/1/baseline.json").write_text(json.dumps(baseline))

    shutil.copytree(good, repo / "bad-index")
    baseline = json.loads((good / "1/baseline.json").read_text())
    baseline["features"][0]["index"] = 30
    (repo / "bad-index/1/baseline.json").write_text(json.dumps(baseline))

    shutil.copytree(good, repo / "bad-checksum")
    wrong = hashlib.sha256(b"another file").hexdigest()
    (repo / "bad-checksum/1/model.onnx.sha256").write_text(f"{wrong}  model.onnx\n")

    (repo / "no-versions").mkdir()
    (repo / "wrong-backend").mkdir()
    shutil.copytree(ROOT / "models/breast-cancer-gbt/1", repo / "wrong-backend/1")
    (repo / "wrong-backend/model.toml").write_text('backend = "tract"\n')
    return repo


def test_each_mistake_is_reported_against_its_model_and_fails_the_run(tmp_path):
    repo = broken_repository(tmp_path)
    done = check(str(repo))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout.splitlines()[-1]
    report = json.loads(check(str(repo), "--json").stdout)
    by_model = {m["model"]: m for m in report["models"]}

    def errors(model: str) -> str:
        m = by_model[model]
        return " ".join([m["error"] or ""] + [v["error"] or "" for v in m["versions"]])

    assert errors("good").strip() == ""
    assert "batching" in errors("bad-toml")  # the unknown key is named
    assert "ONNX" in errors("not-onnx")
    assert "no_such_input" in errors("bad-baseline")
    assert "element 30" in errors("bad-index")
    assert "sha256" in errors("bad-checksum")
    assert "no version directories" in errors("no-versions")
    assert errors("wrong-backend") != ""  # tract cannot run ai.onnx.ml tree ensembles


def test_one_model_can_be_checked_alone_and_a_missing_one_is_an_error(tmp_path):
    repo = broken_repository(tmp_path)
    done = check(str(repo), "--model", "good")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bad-toml" not in done.stdout
    done = check(str(repo), "--model", "absent")
    assert done.returncode == 1
    assert "absent" in done.stderr
    assert check(str(tmp_path / "nowhere")).returncode == 1


def test_an_mlflow_model_is_skipped_offline_and_fails_when_unreachable(tmp_path):
    repo = tmp_path / "repo"
    (repo / "registry").mkdir(parents=True)
    (repo / "registry/model.toml").write_text(
        '[source.mlflow]\ntracking_uri = "http://127.0.0.1:9"\nname = "m"\nalias = "champion"\n')
    offline = check(str(repo), "--offline")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "skip" in offline.stdout
    online = check(str(repo))
    assert online.returncode == 1
    assert "127.0.0.1:9" in online.stdout
