#!/usr/bin/env python3
"""Generate Keel's example model repository (models/) and the test-only repository (tests/models/).

Deterministic: the same pinned requirements (models/requirements.txt) give byte-identical files, so the
outputs are committed and this script is only rerun when a model changes.

    .venv/bin/python models/make_models.py            # rewrite both repositories
    .venv/bin/python models/make_models.py --check    # exit 1 if a committed file differs

Models written:
  models/breast-cancer/{1,2}/model.onnx   standardisation as Sub/Div + logistic regression, in plain ONNX
                                          ops so both ONNX Runtime and tract run it. v1: C=1.0, v2: C=0.05.
  models/breast-cancer-gbt/1/model.onnx   gradient-boosted trees (ai.onnx.ml TreeEnsembleClassifier):
                                          ONNX Runtime only, declared in its model.toml.
  tests/models/datatypes/1/model.onnx     one Identity per KServe datatype (BOOL ... FP64, BYTES) so each
                                          backend's tensor conversion is checked against onnxruntime.
  tests/models/slow-mlp/1/model.onnx      a heavy MLP (32 x MatMul 512x512 + Tanh) for scheduler tests and
                                          batching benchmarks.

Baselines (the drift monitor's reference distributions, monitor/BASELINE.md), one per example version:
  models/*/N/baseline.json                computed here with numpy from the training data and the model's
                                          own outputs (onnxruntime); `keel baseline` computes the same from
                                          tests/data/breast_cancer_train.csv, which a test checks.
"""

import argparse
import hashlib
import io
import sys
from pathlib import Path

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent
OPSET = 17
N_FEATURES = 30


def finish(model: onnx.ModelProto) -> bytes:
    """Fix every field that could vary between machines, check the model, return its bytes."""
    model.producer_name = "keel-make-models"
    model.producer_version = "1"
    model.doc_string = ""
    model.graph.doc_string = ""
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def logistic_regression(mean, scale, coef, intercept) -> bytes:
    """(x - mean) / scale -> MatMul -> Softmax; label = ArgMax. Softmax over [0, z] equals
    [1 - sigmoid(z), sigmoid(z)], which is exactly scikit-learn's binary predict_proba."""
    weights = np.zeros((N_FEATURES, 2), dtype=np.float32)
    weights[:, 1] = coef
    bias = np.array([0.0, intercept], dtype=np.float32)
    inits = [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array(scale.astype(np.float32), "scale"),
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centered"], name="sub_mean"),
        helper.make_node("Div", ["centered", "scale"], ["scaled"], name="div_scale"),
        helper.make_node("MatMul", ["scaled", "weights"], ["logits_nb"], name="matmul_weights"),
        helper.make_node("Add", ["logits_nb", "bias"], ["logits"], name="add_bias"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax_logits"),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0, name="argmax_label"),
    ]
    graph = helper.make_graph(
        nodes,
        "breast_cancer_logreg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", N_FEATURES])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
        ],
        inits,
    )
    return finish(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8))


def breast_cancer_lr(x, y, c: float) -> bytes:
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x), y)
    return logistic_regression(scaler.mean_, scaler.scale_, clf.coef_[0], clf.intercept_[0])


def breast_cancer_gbt(x, y) -> bytes:
    from skl2onnx import to_onnx

    clf = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(x, y)
    model = to_onnx(
        clf,
        x[:1],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        initial_types=None,
    )
    # skl2onnx names the input "X"; Keel's examples share one signature.
    rename = {model.graph.input[0].name: "input"}
    for node in model.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
    model.graph.input[0].name = "input"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[0].Clear()
        out.type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.name = "breast_cancer_gbt"
    return finish(model)


DATATYPES = [
    # (KServe name, ONNX element type)
    ("BOOL", TensorProto.BOOL),
    ("UINT8", TensorProto.UINT8),
    ("UINT16", TensorProto.UINT16),
    ("UINT32", TensorProto.UINT32),
    ("UINT64", TensorProto.UINT64),
    ("INT8", TensorProto.INT8),
    ("INT16", TensorProto.INT16),
    ("INT32", TensorProto.INT32),
    ("INT64", TensorProto.INT64),
    ("FP16", TensorProto.FLOAT16),
    ("FP32", TensorProto.FLOAT),
    ("FP64", TensorProto.DOUBLE),
    ("BYTES", TensorProto.STRING),
]


def datatypes_model() -> bytes:
    nodes, inputs, outputs = [], [], []
    for name, elem in DATATYPES:
        lower = name.lower()
        inputs.append(helper.make_tensor_value_info(f"in_{lower}", elem, ["N", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{lower}", elem, ["N", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{lower}"], [f"out_{lower}"], name=f"id_{lower}"))
    graph = helper.make_graph(nodes, "datatypes", inputs, outputs)
    return finish(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8))


def slow_mlp(width: int = 512, layers: int = 32) -> bytes:
    """A deliberately heavy MLP (one shared width x width weight, `layers` MatMul+Tanh blocks, about
    17 MFLOP per row): long enough per batch to observe queueing, timeouts and batching gains."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, last = [], "input"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [last, "weight"], [f"mm{i}"], name=f"matmul_{i}"))
        out = "output" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Tanh", [f"mm{i}"], [out], name=f"tanh_{i}"))
        last = out
    graph = helper.make_graph(
        nodes,
        "slow_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", width])],
        [numpy_helper.from_array(weight, "weight")],
    )
    return finish(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8))


GBT_TOML = """# Tree ensembles are ai.onnx.ml operators that tract cannot run: serve with ONNX Runtime only.
backend = "onnxruntime"
"""

BREAST_CANCER_TOML = """# Serve both versions; an unversioned request goes to the highest (2).
version_policy = "all"
"""


def build() -> dict[Path, bytes]:
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    y = data.target
    features = list(data.feature_names)
    lr1, lr2, gbt = breast_cancer_lr(x, y, 1.0), breast_cancer_lr(x, y, 0.05), breast_cancer_gbt(x, y)
    return {
        ROOT / "models/breast-cancer/1/model.onnx": lr1,
        ROOT / "models/breast-cancer/1/baseline.json": baseline("breast-cancer", 1, lr1, x, features),
        ROOT / "models/breast-cancer/2/model.onnx": lr2,
        ROOT / "models/breast-cancer/2/baseline.json": baseline("breast-cancer", 2, lr2, x, features),
        ROOT / "models/breast-cancer/model.toml": BREAST_CANCER_TOML.encode(),
        ROOT / "models/breast-cancer-gbt/1/model.onnx": gbt,
        ROOT / "models/breast-cancer-gbt/1/baseline.json": baseline("breast-cancer-gbt", 1, gbt, x, features),
        ROOT / "models/breast-cancer-gbt/model.toml": GBT_TOML.encode(),
        ROOT / "tests/models/datatypes/1/model.onnx": datatypes_model(),
        ROOT / "tests/models/slow-mlp/1/model.onnx": slow_mlp(),
        ROOT / "tests/data/breast_cancer.npy": npy_bytes(x),
        ROOT / "tests/data/breast_cancer_labels.npy": npy_bytes(y.astype(np.int64)),
        ROOT / "tests/data/breast_cancer_train.csv": training_csv(x, features),
    }


BASELINE_BINS = 10


def numeric_distribution(values: np.ndarray) -> dict:
    """Quantile bins as monitor/BASELINE.md defines them: numpy's linear quantiles at k/bins, duplicate
    edges dropped, bin i = (edge[i-1], edge[i]], NaN apart; min and max of the finite values."""
    rows = len(values)
    finite = values[~np.isnan(values)]
    edges = np.unique(np.quantile(finite, np.arange(1, BASELINE_BINS) / BASELINE_BINS))
    counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
    dist = {"kind": "numeric", "edges": [float(e) for e in edges],
            "proportions": [float(c) / rows for c in counts],
            "nan_proportion": float(np.isnan(values).sum()) / rows}
    bounded = finite[np.isfinite(finite)]
    if len(bounded):  # the training range: out-of-range ratio and the Wasserstein distance's outer bounds
        dist.update(min=float(bounded.min()), max=float(bounded.max()))
    return dist


def categorical_distribution(values: np.ndarray) -> dict:
    rows = len(values)
    names, counts = np.unique(values.astype(np.int64), return_counts=True)
    return {"kind": "categorical", "categories": {str(n): float(c) / rows for n, c in zip(names, counts)},
            "other": 0.0, "nan_proportion": 0.0}


def baseline(name: str, version: int, model: bytes, x: np.ndarray, features: list[str]) -> bytes:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input": x})
    columns = [{"name": f, "tensor": "input", "index": i, **numeric_distribution(x[:, i].astype(np.float64))}
               for i, f in enumerate(features)]
    output_columns = []
    for meta, values in zip(session.get_outputs(), outputs):
        values = np.asarray(values).reshape(len(x), -1)
        for j in range(values.shape[1]):
            column = values[:, j]
            label = meta.name if values.shape[1] == 1 else f"{meta.name}[{j}]"
            dist = (categorical_distribution(column) if column.dtype.kind in "iu"
                    else numeric_distribution(column.astype(np.float64)))
            output_columns.append({"name": label, "tensor": meta.name, "index": j, **dist})
    doc = {"schema_version": 1, "model": name, "version": version, "rows": len(x),
           "features": columns, "outputs": output_columns}
    return (json.dumps(doc, indent=1) + "\n").encode()


def training_csv(x: np.ndarray, features: list[str]) -> bytes:
    lines = [",".join(features)] + [",".join(str(v) for v in row) for row in x]
    return ("\n".join(lines) + "\n").encode()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = parser.parse_args()
    stale = 0
    for path, content in build().items():
        digest = hashlib.sha256(content).hexdigest()[:16]
        rel = path.relative_to(ROOT)
        if args.check:
            if not path.exists() or path.read_bytes() != content:
                print(f"differs: {rel}")
                stale += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        print(f"wrote {rel} ({len(content)} bytes, sha256 {digest}...)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
