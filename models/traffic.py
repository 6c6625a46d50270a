#!/usr/bin/env python3
"""Replays the breast-cancer training distribution against a Keel server, optionally drifted, and
optionally sends ground-truth feedback for what it sent (with a fraction of labels deliberately wrong).

    .venv/bin/python models/traffic.py --url http://127.0.0.1:8000 --rows 2000
    .venv/bin/python models/traffic.py --rows 3000 --shift "mean radius=2" --shift "worst area=2"
    .venv/bin/python models/traffic.py --rows 2000 --feedback --wrong-labels 0.3

Rows are drawn with replacement from the training data; `--shift FEATURE=K` adds K training standard
deviations to that feature. Every request carries an id (`<prefix>-<n>`), which is what feedback refers to.
"""

import argparse
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

ROOT = Path(__file__).resolve().parent.parent


def training_data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    x = np.load(ROOT / "tests/data/breast_cancer.npy")
    y = np.load(ROOT / "tests/data/breast_cancer_labels.npy")
    return x, y, list(load_breast_cancer().feature_names)


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


class Traffic:
    """Sends batches of sampled rows; remembers each request's rows' true labels for feedback."""

    def __init__(self, url: str, model: str = "breast-cancer", seed: int = 0, prefix: str = "req"):
        self.url, self.model, self.prefix = url.rstrip("/"), model, prefix
        self.x, self.y, self.features = training_data()
        self.std = self.x.std(axis=0)
        self.rng = np.random.default_rng(seed)
        self.sent: list[tuple[str, np.ndarray, list[int]]] = []  # (id, true labels, predicted labels)
        self.count = 0

    def send(self, rows: int, batch: int = 50, shift: dict[str, float] | None = None,
             version: int | None = None) -> list[dict]:
        responses = []
        path = f"/v2/models/{self.model}" + (f"/versions/{version}" if version else "") + "/infer"
        for start in range(0, rows, batch):
            n = min(batch, rows - start)
            pick = self.rng.integers(0, len(self.x), n)
            rows_x = self.x[pick].copy()
            for feature, k in (shift or {}).items():
                i = self.features.index(feature)
                rows_x[:, i] += np.float32(k * self.std[i])
            request_id = f"{self.prefix}-{self.count}"
            self.count += 1
            body = {"id": request_id, "inputs": [{"name": "input", "shape": [n, 30], "datatype": "FP32",
                                                  "data": rows_x.flatten().tolist()}],
                    "outputs": [{"name": "label"}]}
            response = post(self.url + path, body)
            predicted = next(o["data"] for o in response["outputs"] if o["name"] == "label")
            self.sent.append((request_id, self.y[pick], predicted))
            responses.append(response)
        return responses

    def feedback(self, wrong: float = 0.0) -> dict:
        """Posts the true label of every row sent so far, flipping a `wrong` fraction of them."""
        items = []
        for request_id, labels, _ in self.sent:
            for row, label in enumerate(labels):
                truth = int(label)
                if self.rng.random() < wrong:
                    truth = 1 - truth
                items.append({"id": request_id, "row": row, "label": truth})
        return post(f"{self.url}/v2/models/{self.model}/feedback", {"feedback": items})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="breast-cancer")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--shift", action="append", default=[], metavar="FEATURE=K",
                        help="add K training standard deviations to FEATURE (repeatable)")
    parser.add_argument("--feedback", action="store_true", help="then send the true labels")
    parser.add_argument("--wrong-labels", type=float, default=0.0, help="fraction of feedback labels to flip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="req")
    args = parser.parse_args()
    shift = {k: float(v) for k, v in (s.rsplit("=", 1) for s in args.shift)}
    traffic = Traffic(args.url, args.model, args.seed, args.prefix)
    traffic.send(args.rows, args.batch, shift)
    print(f"sent {args.rows} rows in {traffic.count} requests" + (f", shifted {shift}" if shift else ""))
    if args.feedback:
        print("feedback:", traffic.feedback(args.wrong_labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
