#!/usr/bin/env python3
"""A sample receiver for Keel's drift webhooks: checks the Standard Webhooks signature, logs the event.

    KEEL_WEBHOOK_SECRET=whsec_... python3 webhook_receiver.py --port 9000
    python3 webhook_receiver.py --secret-file /run/secrets/webhook_secret

Standard Webhooks (https://www.standardwebhooks.com): the sender signs
"<webhook-id>.<webhook-timestamp>.<body>" with HMAC-SHA256 keyed by the base64 after "whsec_" (any other
secret: its bytes) and sends "v1,<base64 signature>" in `webhook-signature` (several, space-separated,
while a secret is being rotated). Keel keeps webhook-id across retries. This receiver answers
  204  signature valid (a repeated webhook-id is acknowledged again but logged once),
  401  missing headers, bad signature, or a timestamp more than 5 minutes away from now,
  400  a body that is not JSON.
GET /healthz answers 200. Standard library only, so it runs in any python image.

With --kfp-host (or KFP_HOST) it also starts the retraining pipeline on that Kubeflow Pipelines API
endpoint for each new `dev.keel.drift.detected` or `dev.keel.performance.degraded` event: a run of the
compiled spec (--pipeline-package, default deploy/kubeflow/retrain_pipeline.yaml beside it in the
repository) with the event's model, detection time (window_end_ms), version and webhook-id, and the
parameters given with --pipeline-arg (prediction_log_dir and tracking_uri are required; registered_model
defaults to the event's model). That needs the `kfp` package (tests/requirements.txt pins it):

    python3 webhook_receiver.py --kfp-host http://ml-pipeline.kubeflow:8888 \\
        --pipeline-arg prediction_log_dir=s3://keel-log/prod --pipeline-arg tracking_uri=http://mlflow:5000
"""

import argparse
import base64
import hashlib
import hmac
import importlib.util
import json
import os
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOLERANCE_S = 5 * 60
RETRAIN_ON = {"dev.keel.drift.detected", "dev.keel.performance.degraded"}
PIPELINE_PACKAGE = Path(__file__).resolve().parent.parent / "kubeflow" / "retrain_pipeline.yaml"


class InvalidSignature(Exception):
    pass


def signing_key(secret: str) -> bytes:
    """The HMAC key, as Keel derives it: "whsec_<base64>" decoded, any other text used as it is."""
    secret = secret.strip()
    if secret.startswith("whsec_"):
        encoded = secret[len("whsec_"):]
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    return secret.encode()


def sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """The `webhook-signature` value a sender computes (used by the tests, and handy for curl)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(key: bytes, headers, body: bytes, now: float | None = None) -> str:
    """Checks one delivery; returns its webhook-id or raises InvalidSignature saying why."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(timestamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not an integer") from None
    now = time.time() if now is None else now
    if abs(now - ts) > TOLERANCE_S:
        raise InvalidSignature(f"webhook-timestamp {ts} is more than {TOLERANCE_S}s away from now")
    expected = sign(key, msg_id, timestamp, body).split(",", 1)[1]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return msg_id
    raise InvalidSignature("no v1 signature matches")


def describe(event: dict) -> str:
    """One line about an event (CloudEvents envelope with Keel's alert in `data`, or anything else)."""
    data = event.get("data") if isinstance(event.get("data"), dict) else event
    kind = event.get("type") or data.get("kind", "?")
    parts = [kind]
    for key in ("model", "version", "rule", "metric", "value", "threshold", "rows"):
        if key in data:
            parts.append(f"{key}={data[key]}")
    if data.get("top_features"):
        parts.append("top_features=" + ",".join(str(f[0]) if isinstance(f, list) else str(f)
                                                for f in data["top_features"][:5]))
    return " ".join(parts)


class Pipeline:
    """Starts runs of the compiled retraining pipeline on a KFP API endpoint (kfp imported only here)."""

    def __init__(self, host: str, package: str, arguments: dict, experiment: str = "keel-retrain"):
        missing = {"prediction_log_dir", "tracking_uri"} - arguments.keys()
        if missing:
            raise ValueError(f"--kfp-host needs --pipeline-arg for {', '.join(sorted(missing))}")
        if not os.path.isfile(package):
            raise ValueError(f"no pipeline package at {package} (--pipeline-package)")
        if importlib.util.find_spec("kfp") is None:  # fail at start, not at the first event
            raise ValueError("--kfp-host needs the kfp package (pip install kfp)")

        self.host, self.package, self.arguments, self.experiment = host, package, arguments, experiment

    def arguments_for(self, msg_id: str, data: dict) -> dict:
        arguments = {"keel_model": data["model"], "registered_model": data["model"],
                     "since_ms": int(data["window_end_ms"]), "trigger_event": msg_id,
                     "served_version": int(data.get("version") or 0)}
        return {**arguments, **self.arguments}

    def start(self, msg_id: str, data: dict) -> str:
        import kfp

        run = kfp.Client(host=self.host).create_run_from_pipeline_package(
            self.package, arguments=self.arguments_for(msg_id, data), run_name=f"keel-retrain-{msg_id}",
            experiment_name=self.experiment)
        return run.run_id


def start_pipeline(pipeline: Pipeline, msg_id: str, data: dict) -> None:
    """In a thread of its own, so that the delivery is answered at once."""
    try:
        run_id = pipeline.start(msg_id, data)
        print(f"started pipeline run {run_id} for {msg_id} on {pipeline.host}", flush=True)
    except Exception as e:  # noqa: BLE001 - logged; the event was still received
        print(f"could not start the pipeline for {msg_id}: {e!r}", flush=True)


class Receiver(BaseHTTPRequestHandler):
    key: bytes = b""
    seen: "OrderedDict[str, None]" = OrderedDict()
    pipeline: "Pipeline | None" = None

    def log_message(self, fmt, *args):  # one line per request, on stderr
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _answer(self, status: int, text: str = "") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            self._answer(200, "ok\n")
        else:
            self._answer(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            msg_id = verify(self.key, self.headers, body)
        except InvalidSignature as e:
            print(f"rejected: {e}", flush=True)
            self._answer(401, f"{e}\n")
            return
        try:
            event = json.loads(body)
        except ValueError:
            self._answer(400, "body is not JSON\n")
            return
        if msg_id in self.seen:
            print(f"duplicate {msg_id} (already logged)", flush=True)
        else:
            self.seen[msg_id] = None
            while len(self.seen) > 10000:
                self.seen.popitem(last=False)
            print(f"event {msg_id}: {describe(event) if isinstance(event, dict) else event}", flush=True)
            print(json.dumps(event, sort_keys=True), flush=True)
            data = event.get("data") if isinstance(event, dict) else None
            if self.pipeline and isinstance(data, dict) and event.get("type") in RETRAIN_ON \
                    and "model" in data and "window_end_ms" in data:
                threading.Thread(target=start_pipeline, args=(self.pipeline, msg_id, data), daemon=True).start()
        self._answer(204)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9000")))
    parser.add_argument("--secret-file", default=os.environ.get("KEEL_WEBHOOK_SECRET_FILE"),
                        help="file holding the whsec_ secret (else $KEEL_WEBHOOK_SECRET)")
    parser.add_argument("--kfp-host", default=os.environ.get("KFP_HOST"),
                        help="start the retraining pipeline on this KFP API endpoint (else $KFP_HOST; unset: log only)")
    parser.add_argument("--pipeline-package", default=str(PIPELINE_PACKAGE), help="the compiled pipeline spec")
    parser.add_argument("--pipeline-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a pipeline parameter (repeatable); the value as JSON when it parses, else text")
    parser.add_argument("--kfp-experiment", default="keel-retrain")
    args = parser.parse_args(argv)
    if args.secret_file:
        with open(args.secret_file) as f:
            secret = f.read()
    else:
        secret = os.environ.get("KEEL_WEBHOOK_SECRET", "")
    if not secret.strip():
        parser.error("no secret: set KEEL_WEBHOOK_SECRET or pass --secret-file")
    Receiver.key = signing_key(secret)
    if args.kfp_host:
        arguments = {}
        for item in args.pipeline_arg:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"--pipeline-arg {item!r}: expected KEY=VALUE")
            try:
                arguments[key] = json.loads(value)
            except ValueError:
                arguments[key] = value
        try:
            Receiver.pipeline = Pipeline(args.kfp_host, args.pipeline_package, arguments, args.kfp_experiment)
        except ValueError as e:
            parser.error(str(e))
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"webhook receiver listening on {args.host}:{server.server_address[1]}", flush=True)
    if Receiver.pipeline:
        print(f"starts the retraining pipeline {args.pipeline_package} on {args.kfp_host}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
