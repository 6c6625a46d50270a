#!/usr/bin/env python3
"""Keel's retraining loop as a Kubeflow Pipelines (KFP v2) pipeline: read the prediction log, train a
challenger, evaluate it against the serving champion on a holdout, register it in MLflow, and move the
alias Keel follows only when the challenger is better.

    .venv/bin/python deploy/kubeflow/retrain_pipeline.py compile      # rewrite retrain_pipeline.yaml (make kubeflow)
    .venv/bin/python deploy/kubeflow/retrain_pipeline.py check        # exit 1 if the committed spec is stale
    .venv/bin/python deploy/kubeflow/retrain_pipeline.py run-local --pipeline-root DIR \\
        --arguments '{"prediction_log_dir": "...", "keel_model": "breast-cancer", ...}' [--outputs FILE]
    .venv/bin/python deploy/kubeflow/retrain_pipeline.py submit --host URL --arguments '{...}'

Steps (each a lightweight Python component, its imports inside the function):
  collect-rows        labelled rows logged at or after `since_ms`: predictions joined with feedback on
                      (request_id, row) from finished Parquet files (a folder, or a pyarrow filesystem
                      URI such as s3://bucket/prefix); waits up to `wait_timeout_s` for `min_rows`; splits
                      off `holdout_fraction` of them (seeded)
  fetch-champion      the version `alias` points at in MLflow: its model.onnx and its feature names
  train-challenger    standardisation + logistic regression on the training split, exported with
                      models/make_models.py's logistic_regression, baseline.json with its baseline
  evaluate            both models scored with onnxruntime on the same holdout; the challenger wins when
                      there is no champion or its `metric` (accuracy or roc_auc) beats the champion's by
                      more than `min_improvement` (a tie keeps the champion)
  register-and-promote
                      the challenger's model.onnx and baseline.json as a run's `model/` artifacts (where
                      Keel looks) with the scores, registered as a new version whatever the outcome; then
                      `alias` moved to it only when the challenger won and the alias still points at the
                      champion that was evaluated

The committed spec (retrain_pipeline.yaml) is for a cluster: each step starts from BASE_IMAGE and pip
installs the packages it needs at the versions the tests pin. `run-local` runs the same pipeline with
kfp.local in subprocesses of this interpreter, so the steps install nothing there (same code, same DAG;
tests/test_kubeflow.py checks that the two specs differ only in that). README.md beside this file.
"""

import argparse
import ast
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import yaml
from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SPEC = HERE / "retrain_pipeline.yaml"
PIPELINE_NAME = "keel-retrain"
# The image every step starts from on a cluster (the tests' Python); see packages() for what it installs.
BASE_IMAGE = "docker.io/library/python:3.11-slim"


# --- Components ------------------------------------------------------------------------------------------
# Lightweight components: KFP ships each function's source alone, so everything it uses is imported or
# defined inside it. Their lines stay within 100 columns so that the spec shows them as literal blocks.


def collect_rows(
    prediction_log_dir: str, keel_model: str, since_ms: int, min_rows: int, wait_timeout_s: float,
    holdout_fraction: float, seed: int, input_tensor: str, prediction_output: str,
    train_rows: Output[Dataset], holdout_rows: Output[Dataset],
) -> NamedTuple("Collected", [("rows", int), ("holdout", int), ("served_accuracy", float)]):
    """Labelled rows logged at or after since_ms, split into training rows and a holdout.

    Args:
        prediction_log_dir: Keel's --prediction-log-dir, or a pyarrow filesystem URI
            (s3://bucket/prefix) with the same layout.
        keel_model: Keel's model name (its folder in the log).
        since_ms: only rows logged at or after this (Unix ms; the alert's window_end_ms).
        min_rows: labelled rows to wait for.
        wait_timeout_s: how long to wait for them before failing.
        holdout_fraction: share of the rows held out for the evaluation.
        seed: seed of the split.
        input_tensor: the input tensor whose columns (<name>_<i>) are the features.
        prediction_output: the served model's predicted-label column, for its accuracy here.
    """
    import os
    import re
    import time

    import numpy as np
    import pandas as pd
    from pyarrow import fs as pafs

    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if "://" in prediction_log_dir:
        filesystem, root = pafs.FileSystem.from_uri(prediction_log_dir)
    else:
        filesystem, root = pafs.LocalFileSystem(), os.path.abspath(prediction_log_dir)
    # Keel's folder for a model: anything but [A-Za-z0-9._-] becomes `_`.
    folder = root.rstrip("/") + "/" + re.sub(r"[^A-Za-z0-9._-]", "_", keel_model)
    name = re.compile(r"(predictions|feedback)-(\d+)-(\d+)-(\d+)\.parquet")

    def finished(kind):
        """Finished files of `kind` holding rows at or after since_ms: the names tell (files being
        written, and Keel's own bookkeeping, have hidden `.` names)."""
        selector = pafs.FileSelector(folder, allow_not_found=True)
        found = []
        for info in filesystem.get_file_info(selector):
            match = name.fullmatch(info.base_name)
            if match and match[1] == kind and int(match[3]) >= since_ms:
                found.append(info.path)
        return sorted(found)

    def read(paths):
        frames = [pd.read_parquet(path, filesystem=filesystem) for path in paths]
        return pd.concat(frames, ignore_index=True) if frames else None

    def labelled():
        predictions = read(finished("predictions"))
        # Feedback comes after its prediction: a file of feedback for these rows ends after since_ms.
        feedback = read(finished("feedback"))
        if predictions is None or feedback is None:
            return pd.DataFrame()
        predictions = predictions[predictions["timestamp_ms"] >= since_ms]
        truth = feedback["truth_value"]
        if "truth_label" in feedback:
            truth = truth.fillna(pd.to_numeric(feedback["truth_label"], errors="coerce"))
        feedback = feedback.assign(truth=truth).dropna(subset=["truth"])
        # A label sent twice counts once, the later one winning (a correction).
        feedback = feedback.sort_values("timestamp_ms")
        feedback = feedback.drop_duplicates(["request_id", "row"], keep="last")
        return predictions.merge(feedback[["request_id", "row", "truth"]], on=["request_id", "row"])

    deadline = time.monotonic() + wait_timeout_s
    while len(rows := labelled()) < min_rows:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(rows)} labelled rows of {keel_model} in {folder} at or "
                               f"after {since_ms} within {wait_timeout_s:.0f} s (need {min_rows})")
        time.sleep(0.25)

    column = re.compile(re.escape(input_tensor) + r"_(\d+)")
    features = sorted((c for c in rows.columns if column.fullmatch(c)),
                      key=lambda c: int(column.fullmatch(c)[1]))
    if not features:
        raise ValueError(f"no {input_tensor}_<i> columns in the log: {list(rows.columns)}")
    # A stable order whatever the listing gave, so that the seeded split is reproducible.
    rows = rows.sort_values(["timestamp_ms", "request_id", "row"], ignore_index=True)
    served = float("nan")
    if prediction_output in rows:
        served = float((rows[prediction_output].to_numpy() == rows["truth"].to_numpy()).mean())
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = max(1, int(round(len(rows) * holdout_fraction)))
    rows = rows[features + ["truth"]]
    rows.iloc[order[cut:]].reset_index(drop=True).to_parquet(train_rows.path)
    rows.iloc[order[:cut]].reset_index(drop=True).to_parquet(holdout_rows.path)
    train_rows.metadata["rows"], holdout_rows.metadata["rows"] = len(rows) - cut, cut
    print(f"{len(rows)} labelled rows of {keel_model} at or after {since_ms}: "
          f"{len(rows) - cut} to train on, {cut} held out; the served model got {served:.3f} right")
    return len(rows), cut, served


def fetch_champion(
    tracking_uri: str, registered_model: str, alias: str, champion_model: Output[Model],
) -> NamedTuple("Champion", [("found", bool), ("version", int), ("next_version", int),
                             ("feature_names", list)]):
    """The version the alias points at: its model.onnx, its number and its baseline's feature names.

    Args:
        tracking_uri: MLflow tracking server.
        registered_model: the registered model Keel serves.
        alias: the alias Keel follows.
    """
    import json
    import os
    import shutil
    import tempfile

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = client.search_model_versions(f"name = '{registered_model}'")
    next_version = max((int(v.version) for v in versions), default=0) + 1  # for baseline.json
    try:
        version = client.get_model_version_by_alias(registered_model, alias)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        print(f"no champion, {registered_model}@{alias}: {error.message}")
        open(champion_model.path, "wb").close()
        return False, 0, next_version, []
    source = client.get_model_version_download_uri(registered_model, version.version).rstrip("/")

    def download(file, stage):
        return mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source}/{file}", dst_path=stage, tracking_uri=tracking_uri)

    with tempfile.TemporaryDirectory() as stage:
        os.makedirs(os.path.dirname(champion_model.path), exist_ok=True)
        shutil.copyfile(download("model.onnx", stage), champion_model.path)
        try:
            with open(download("baseline.json", stage)) as f:
                names = [feature["name"] for feature in json.load(f)["features"]]
        except Exception as error:  # noqa: BLE001 - only the names are lost
            print(f"no feature names from the champion's baseline.json ({error})")
            names = []
    champion_model.metadata["version"] = int(version.version)
    print(f"champion: {registered_model} version {version.version} ({registered_model}@{alias})")
    return True, int(version.version), next_version, names


def train_challenger(
    train_rows: Input[Dataset], keel_model: str, next_version: int, feature_names: list,
    regularization: float, make_models_source: str, opset: int, baseline_bins: int,
    challenger_model: Output[Model], challenger_baseline: Output[Artifact],
) -> NamedTuple("Trained", [("train_accuracy", float)]):
    """Standardisation + logistic regression on the training rows, as an ONNX model (make_models'
    logistic_regression) and its baseline.json (make_models' baseline) from the same rows.

    Args:
        keel_model: Keel's model name, written into baseline.json.
        next_version: the version number written into baseline.json (informational).
        feature_names: the champion's feature names, kept for the CSI series' labels (else the
            column names, input_<i>).
        regularization: inverse regularisation strength C of the logistic regression.
        make_models_source: models/make_models.py's export functions (logistic_regression, baseline
            and what they call) as source: the pipeline passes them as a constant.
        opset: ONNX opset of the exported model (make_models.OPSET).
        baseline_bins: quantile bins of the baseline's numeric columns (make_models.BASELINE_BINS).
    """
    import json

    import numpy as np
    import onnx
    import onnxruntime as ort
    import pandas as pd
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rows = pd.read_parquet(train_rows.path)
    columns = [c for c in rows.columns if c != "truth"]
    x = rows[columns].to_numpy(np.float32)
    y = rows["truth"].to_numpy().astype(np.int64)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError(f"a binary classifier needs labels 0 and 1, got {sorted(set(y))}")
    # make_models' functions, defined in a namespace that holds the module globals they use.
    make_models = {"np": np, "onnx": onnx, "ort": ort, "json": json, "TensorProto": TensorProto,
                   "helper": helper, "numpy_helper": numpy_helper, "N_FEATURES": x.shape[1],
                   "OPSET": opset, "BASELINE_BINS": baseline_bins}
    exec(make_models_source, make_models)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=regularization, max_iter=5000).fit(scaler.transform(x), y)
    model = make_models["logistic_regression"](
        scaler.mean_, scaler.scale_, clf.coef_[0], clf.intercept_[0])
    names = feature_names if len(feature_names) == x.shape[1] else columns
    with open(challenger_model.path, "wb") as f:
        f.write(model)
    with open(challenger_baseline.path, "wb") as f:
        f.write(make_models["baseline"](keel_model, next_version, model, x, names))
    accuracy = float((clf.predict(scaler.transform(x)) == y).mean())
    print(f"trained on {len(rows)} rows (positives {y.mean():.2f}), C={regularization}: "
          f"training accuracy {accuracy:.3f}; baseline.json from the same rows")
    return (accuracy,)


def evaluate(
    holdout_rows: Input[Dataset], challenger_model: Input[Model], champion_model: Input[Model],
    champion_found: bool, metric: str, min_improvement: float, prediction_output: str,
    metrics: Output[Metrics],
) -> NamedTuple("Evaluation", [("winner", str), ("challenger_wins", bool),
                               ("challenger_score", float), ("champion_score", float)]):
    """Scores challenger and champion with onnxruntime on the same holdout.

    Args:
        champion_found: whether there is a champion; without one the challenger wins.
        metric: accuracy (of the predicted label) or roc_auc (of the positive class's probability).
        min_improvement: how much the challenger must beat the champion by; a tie keeps the champion.
        prediction_output: the models' predicted-label output.
    """
    import numpy as np
    import onnxruntime as ort
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    if metric not in ("accuracy", "roc_auc"):
        raise ValueError(f"metric must be accuracy or roc_auc, got {metric!r}")
    rows = pd.read_parquet(holdout_rows.path)
    x = rows[[c for c in rows.columns if c != "truth"]].to_numpy(np.float32)
    y = rows["truth"].to_numpy().astype(np.int64)

    def scores(path):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
        label = np.asarray(outputs[prediction_output]).reshape(len(x))
        result = {"accuracy": float((label == y).mean()), "roc_auc": float("nan")}
        probabilities = outputs.get("probabilities")
        if probabilities is not None and len(set(y)) == 2:
            positive = np.asarray(probabilities).reshape(len(x), -1)[:, -1]
            result["roc_auc"] = float(roc_auc_score(y, positive))
        return result

    challenger = scores(challenger_model.path)
    champion = {"accuracy": float("nan"), "roc_auc": float("nan")}
    if champion_found:
        champion = scores(champion_model.path)
    wins = not champion_found or challenger[metric] > champion[metric] + min_improvement
    for name, values in (("challenger", challenger), ("champion", champion)):
        for key, value in values.items():
            if value == value:  # not NaN
                metrics.log_metric(f"{name}_{key}", value)
    metrics.log_metric("holdout_rows", len(rows))
    winner = "challenger" if wins else "champion"
    print(f"holdout of {len(rows)} rows, {metric}: challenger {challenger[metric]:.4f}, "
          f"champion {champion[metric]:.4f}: the {winner} wins")
    return winner, wins, challenger[metric], champion[metric]


def register_and_promote(
    tracking_uri: str, registered_model: str, alias: str, experiment: str,
    challenger_model: Input[Model], challenger_baseline: Input[Artifact], rows: int, holdout: int,
    served_accuracy: float, metric: str, challenger_score: float, champion_score: float,
    challenger_wins: bool, champion_version: int, since_ms: int, trigger_event: str,
    served_version: int,
) -> NamedTuple("Registered", [("version", int), ("run_id", str), ("registered_at", float),
                               ("alias_version", int), ("alias_moved", bool),
                               ("promoted_at", float)]):
    """Logs the challenger as a run's `model/` artifacts (model.onnx and baseline.json, where Keel
    looks) with its evaluation, registers it as the next version of the registered model, whoever
    won, and moves the alias to it if the challenger won, unless the alias no longer points at the
    champion that was evaluated (someone moved it meanwhile: the comparison no longer holds).

    Args:
        experiment: the MLflow experiment of the retraining runs.
        challenger_wins: the evaluation's verdict.
        champion_version: the version the alias pointed at when the champion was fetched (0: none).
        trigger_event: the webhook-id of the event that started this run, if any.
        served_version: the version Keel served when the event fired, if known.
    """
    import math
    import shutil
    import tempfile
    import time

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(registered_model)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    winner = "challenger" if challenger_wins else "champion"
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, tags={"keel.winner": winner})
    params = {"rows": rows, "holdout_rows": holdout, "metric": metric, "since_ms": since_ms,
              "champion_version": champion_version, "trigger_event": trigger_event,
              "served_version": served_version}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    scores = {f"holdout_{metric}": challenger_score, f"champion_holdout_{metric}": champion_score,
              "served_accuracy": served_accuracy}
    for key, value in scores.items():
        if not math.isnan(value):
            client.log_metric(run.info.run_id, key, value)
    with tempfile.TemporaryDirectory() as stage:
        shutil.copyfile(challenger_model.path, f"{stage}/model.onnx")
        shutil.copyfile(challenger_baseline.path, f"{stage}/baseline.json")
        client.log_artifacts(run.info.run_id, stage, artifact_path="model")
    client.set_terminated(run.info.run_id)
    registered = client.create_model_version(
        registered_model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
        tags={"keel.winner": winner})
    version, registered_at = int(registered.version), time.time()
    print(f"registered {registered_model} version {version} (run {run.info.run_id})")

    try:
        current = int(client.get_model_version_by_alias(registered_model, alias).version)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        current = 0
    if not challenger_wins:
        print(f"the champion stays: {registered_model}@{alias} -> version {current}")
        return version, run.info.run_id, registered_at, current, False, 0.0
    if current != champion_version:
        print(f"not moving {alias}: it points at version {current} now, not at the evaluated "
              f"champion {champion_version}")
        return version, run.info.run_id, registered_at, current, False, 0.0
    client.set_registered_model_alias(registered_model, alias, str(version))
    print(f"moved {registered_model}@{alias}: version {current} -> {version}")
    return version, run.info.run_id, registered_at, version, True, time.time()


# --- The pipeline ----------------------------------------------------------------------------------------

def requirements() -> dict[str, str]:
    """name -> pinned version from the requirements files the tests install."""
    pins = {}
    for path in (ROOT / "models/requirements.txt", ROOT / "tests/requirements.txt"):
        for line in path.read_text().splitlines():
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", line.split("#")[0].strip())
            if match:
                pins[match[1].lower()] = match[2]
    return pins


def packages(*names: str) -> list[str]:
    """A cluster step's pip requirements, at the versions the tests pin (mlflow-skinny: MLflow's client
    without the server, at MLflow's version)."""
    pins = requirements()
    return [f"{name}=={pins['mlflow' if name == 'mlflow-skinny' else name]}" for name in names]


DATA = ("numpy", "pandas", "pyarrow")
STEPS = {  # component function -> what it imports on a cluster
    collect_rows: DATA,
    fetch_champion: ("mlflow-skinny",),
    train_challenger: DATA + ("scikit-learn", "onnx", "onnxruntime"),
    evaluate: DATA + ("scikit-learn", "onnxruntime"),
    register_and_promote: ("mlflow-skinny",),
}


def make_models() -> tuple[str, dict]:
    """What train-challenger runs of models/make_models.py: its ONNX export and baseline functions, as
    source, and the constants they use. Read, not imported (that would load scikit-learn, onnx and
    onnxruntime just to compile); a change there shows as a stale spec."""
    text = (ROOT / "models/make_models.py").read_text()
    tree = ast.parse(text)
    functions = {node.name: ast.get_source_segment(text, node) for node in tree.body
                 if isinstance(node, ast.FunctionDef)}
    constants = {target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)
                 and target.id in ("OPSET", "BASELINE_BINS")}
    names = ("finish", "logistic_regression", "numeric_distribution", "categorical_distribution", "baseline")
    return "\n\n\n".join(functions[name] for name in names) + "\n", constants


def build(local: bool = False, base_image: str = BASE_IMAGE, install: bool = True):
    """The pipeline. local=True: for kfp.local in this interpreter, which has every package, so the steps
    install nothing (not even kfp); otherwise each step pip installs its packages and kfp (install=False:
    base_image already has them)."""
    install = install and not local
    source, constants = make_models()
    steps = {
        func: dsl.component(func, base_image=base_image, install_kfp_package=install,
                            packages_to_install=packages(*needs) if install else [])
        for func, needs in STEPS.items()
    }
    Outputs = NamedTuple("Outputs", [
        ("winner", str), ("challenger_version", int), ("champion_version", int), ("challenger_score", float),
        ("champion_score", float), ("alias_version", int), ("alias_moved", bool), ("rows", int),
        ("served_accuracy", float), ("registered_at", float), ("promoted_at", float)])

    @dsl.pipeline(name=PIPELINE_NAME, description="Keel's retraining loop: challenger vs champion, alias moved "
                  "if the challenger wins")
    def retrain(prediction_log_dir: str, keel_model: str, tracking_uri: str, registered_model: str,
                alias: str = "champion", since_ms: int = 0, min_rows: int = 1000, wait_timeout_s: float = 300.0,
                holdout_fraction: float = 0.2, metric: str = "accuracy", min_improvement: float = 0.0,
                regularization: float = 1.0, seed: int = 0, input_tensor: str = "input",
                prediction_output: str = "label", experiment: str = "keel-retrain", trigger_event: str = "",
                served_version: int = 0) -> Outputs:
        collected = steps[collect_rows](
            prediction_log_dir=prediction_log_dir, keel_model=keel_model, since_ms=since_ms, min_rows=min_rows,
            wait_timeout_s=wait_timeout_s, holdout_fraction=holdout_fraction, seed=seed, input_tensor=input_tensor,
            prediction_output=prediction_output)
        champion = steps[fetch_champion](tracking_uri=tracking_uri, registered_model=registered_model, alias=alias)
        trained = steps[train_challenger](
            train_rows=collected.outputs["train_rows"], keel_model=keel_model,
            next_version=champion.outputs["next_version"], feature_names=champion.outputs["feature_names"],
            regularization=regularization, make_models_source=source, opset=constants["OPSET"],
            baseline_bins=constants["BASELINE_BINS"])
        evaluated = steps[evaluate](
            holdout_rows=collected.outputs["holdout_rows"], challenger_model=trained.outputs["challenger_model"],
            champion_model=champion.outputs["champion_model"], champion_found=champion.outputs["found"],
            metric=metric, min_improvement=min_improvement, prediction_output=prediction_output)
        registered = steps[register_and_promote](
            tracking_uri=tracking_uri, registered_model=registered_model, alias=alias,
            experiment=experiment, challenger_model=trained.outputs["challenger_model"],
            challenger_baseline=trained.outputs["challenger_baseline"], rows=collected.outputs["rows"],
            holdout=collected.outputs["holdout"], served_accuracy=collected.outputs["served_accuracy"],
            metric=metric, challenger_score=evaluated.outputs["challenger_score"],
            champion_score=evaluated.outputs["champion_score"],
            challenger_wins=evaluated.outputs["challenger_wins"],
            champion_version=champion.outputs["version"], since_ms=since_ms,
            trigger_event=trigger_event, served_version=served_version)
        for task in (collected, champion, trained, evaluated, registered):
            # Every run reads new rows and a registry that moved: a cached step would be wrong.
            task.set_caching_options(False)
        return Outputs(
            winner=evaluated.outputs["winner"], challenger_version=registered.outputs["version"],
            champion_version=champion.outputs["version"], challenger_score=evaluated.outputs["challenger_score"],
            champion_score=evaluated.outputs["champion_score"], alias_version=registered.outputs["alias_version"],
            alias_moved=registered.outputs["alias_moved"], rows=collected.outputs["rows"],
            served_accuracy=collected.outputs["served_accuracy"],
            registered_at=registered.outputs["registered_at"], promoted_at=registered.outputs["promoted_at"])

    return retrain


# --- Compiling -------------------------------------------------------------------------------------------

LINE_LIMIT = 120  # deploy/.yamllint


class _Dumper(yaml.SafeDumper):
    """The compiler's YAML restyled for deploy/.yamllint: indented sequences, lines within LINE_LIMIT.
    Multi-line strings (the steps' code) are literal blocks where every line fits, else double-quoted
    and broken with escaped line breaks (which a YAML parser joins back without adding anything)."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)

    def write_literal(self, text):
        if max(len(line) for line in text.split("\n")) + self.indent > LINE_LIMIT:
            return self.write_double_quoted(text)
        return super().write_literal(text)

    def write_double_quoted(self, text, split=True):
        self.write_indicator('"', True)
        for ch in text:
            if ch in self.ESCAPE_REPLACEMENTS:  # `"` and the backslash among them
                token = "\\" + self.ESCAPE_REPLACEMENTS[ch]
            elif " " <= ch <= "~" or (self.allow_unicode and "\xa0" <= ch <= "\ufffd"):
                token = ch
            else:
                token = f"\\u{ord(ch):04X}" if ch <= "\uffff" else f"\\U{ord(ch):08X}"
            # Room for the `\` of a break or the closing quote after this token.
            if self.column + len(token) > LINE_LIMIT - 1:
                self.stream.write("\\")
                self.write_indent()
                if token == " ":
                    token = "\\ "  # a continuation line's leading spaces would be dropped
            self.stream.write(token)
            self.column += len(token)
        self.write_indicator('"', False)


def _string(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else '"' if len(value) > 80 else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def compile_raw(path: Path, **build_args) -> Path:
    """kfp's compiler output, as it writes it."""
    compiler.Compiler().compile(build(**build_args), str(path))
    return path


def compile_text(**build_args) -> str:
    """The spec as committed: the compiler's header comment and its document, restyled (equal to the
    compiler's output after yaml.safe_load; a test checks it)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = compile_raw(Path(tmp) / "spec.yaml", **build_args).read_text()
    lines = raw.splitlines(keepends=True)
    header = "".join(lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])
    documents = list(yaml.safe_load_all(raw))
    body = "---\n".join(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=LINE_LIMIT, allow_unicode=True)
                        for doc in documents)
    return f"# Generated by deploy/kubeflow/retrain_pipeline.py (make kubeflow): do not edit.\n{header}{body}"


# --- Running ---------------------------------------------------------------------------------------------

def run_local(arguments: dict, pipeline_root: Path, as_on_a_cluster: bool = False) -> dict:
    """Runs the pipeline with kfp.local in subprocesses of this interpreter; returns its outputs. kfp.local's
    configuration is per process: tests/test_kubeflow.py and models/retrain_hook.py call it through
    `run-local` in a child process. as_on_a_cluster: the committed spec's steps instead, each in a fresh
    virtual environment where it pip installs what it installs on a cluster (needs PyPI; minutes)."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=as_on_a_cluster), pipeline_root=str(pipeline_root))
    return dict(build(local=not as_on_a_cluster)(**arguments).outputs)


def submit(host: str, arguments: dict, run_name: str | None = None, experiment: str = PIPELINE_NAME,
           package: Path = SPEC) -> str:
    """Starts a run of the compiled spec on a KFP API endpoint; returns the run id."""
    import kfp

    client = kfp.Client(host=host)
    result = client.create_run_from_pipeline_package(
        str(package), arguments=arguments, run_name=run_name or f"{PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}",
        experiment_name=experiment)
    return result.run_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    compile_cmd = commands.add_parser("compile", help=f"write the compiled spec (default {SPEC.relative_to(ROOT)})")
    compile_cmd.add_argument("--output", type=Path, default=SPEC)
    compile_cmd.add_argument("--base-image", default=BASE_IMAGE, help="the image every step starts from")
    compile_cmd.add_argument("--preinstalled", action="store_true",
                             help="the image already has kfp and the steps' packages: install nothing")
    commands.add_parser("check", help="exit 1 if the committed spec differs from a fresh compilation")
    local_cmd = commands.add_parser("run-local", help="run the pipeline with kfp.local (no cluster)")
    local_cmd.add_argument("--pipeline-root", type=Path, required=True, help="where the steps' outputs go")
    local_cmd.add_argument("--arguments", required=True, help="the pipeline's arguments, a JSON object")
    local_cmd.add_argument("--outputs", type=Path, help="write the pipeline's outputs here as JSON")
    local_cmd.add_argument("--as-on-a-cluster", action="store_true",
                           help="each step in a fresh venv, pip installing what it installs on a cluster")
    submit_cmd = commands.add_parser("submit", help="start a run of the compiled spec on a KFP API endpoint")
    submit_cmd.add_argument("--host", required=True)
    submit_cmd.add_argument("--arguments", required=True, help="the pipeline's arguments, a JSON object")
    submit_cmd.add_argument("--experiment", default=PIPELINE_NAME)
    args = parser.parse_args()

    if args.command == "compile":
        args.output.write_text(compile_text(base_image=args.base_image, install=not args.preinstalled))
        print(f"wrote {args.output}")
    elif args.command == "check":
        if not SPEC.exists() or SPEC.read_text() != compile_text():
            print(f"{SPEC.relative_to(ROOT)} is stale: regenerate it with `make kubeflow`")
            return 1
        print(f"{SPEC.relative_to(ROOT)} is current")
    elif args.command == "run-local":
        outputs = run_local(json.loads(args.arguments), args.pipeline_root, args.as_on_a_cluster)
        text = json.dumps(outputs, indent=1, sort_keys=True)
        if args.outputs:
            args.outputs.write_text(text + "\n")
        print(f"pipeline outputs: {text}")
    else:
        print(f"started run {submit(args.host, json.loads(args.arguments), experiment=args.experiment)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
