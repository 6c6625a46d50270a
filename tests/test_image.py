"""The container image: deploy/container/build-image.sh (what `make image` runs) builds
deploy/container/Containerfile with podman, taking this build's keel binary (KEEL_BIN, stripped) and
libonnxruntime.so (ORT_DYLIB_PATH) through the Containerfile's `host` stage, on a Debian base built with
mmdebstrap (kept as localhost/keel-base:trixie-slim, so only the first run builds it).

Containers cannot run on these machines (the OCI runtime cannot set rlimits and cgroups), so the test runs the
image the way a runtime would, without one: the image's own filesystem (podman create + podman export), its
user (chroot --userspec), its environment, working directory, entrypoint and command, then answers an
inference and a metrics scrape. Skipped without podman or mmdebstrap (`make system-deps` installs both)."""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import KEEL_BIN, ROOT, reference

PODMAN = shutil.which("podman")
MMDEBSTRAP = shutil.which("mmdebstrap")
TAG = "localhost/keel:test"
BASE = "localhost/keel-base:trixie-slim"
STAGE = "target/image-test"

pytestmark = pytest.mark.skipif(
    not (PODMAN and MMDEBSTRAP),
    reason="needs podman and mmdebstrap (Debian: apt-get install podman mmdebstrap, or make system-deps)")


def podman(*args: str, check: bool = True) -> str:
    proc = subprocess.run([PODMAN, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def image_ids() -> set[str]:
    return set(podman("images", "--all", "--quiet", "--no-trunc").split())


def ort_library() -> str:
    path = os.environ.get("ORT_DYLIB_PATH") or next(
        iter(sorted(ROOT.glob(".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))), "")
    assert path and Path(path).is_file(), "no libonnxruntime.so: set ORT_DYLIB_PATH (make test does)"
    return path


@pytest.fixture(scope="module")
def image():
    """Builds TAG as `make image` builds keel:latest; afterwards removes it, the images its build left (not
    the cached base) and the staged files."""
    if os.geteuid() != 0:
        pytest.skip("needs root: root podman storage, and chroot into the image's filesystem")
    before = image_ids()
    started = time.monotonic()
    try:
        build = subprocess.run(
            [str(ROOT / "deploy/container/build-image.sh"), "--keel", KEEL_BIN, "--onnxruntime", ort_library(),
             "--tag", TAG, "--stage", STAGE],
            cwd=ROOT, env=dict(os.environ, ENGINE="podman"), capture_output=True, text=True, timeout=900)
        assert build.returncode == 0, f"build-image.sh failed:\n{build.stdout[-6000:]}{build.stderr[-6000:]}"
        print(f"image built in {time.monotonic() - started:.0f} s")
        (info,) = json.loads(podman("image", "inspect", TAG))
        yield info
    finally:
        podman("rmi", TAG, check=False)
        keep = set(podman("images", "--quiet", "--no-trunc", BASE, check=False).split())
        # Left by this build: the host stage and the layers of stages no longer tagged. Only untagged ones,
        # so a concurrent `make image` keeps its keel:latest.
        dangling = set(podman("images", "--all", "--quiet", "--no-trunc", "--filter", "dangling=true",
                              check=False).split())
        left = sorted((image_ids() - before - keep) & dangling)
        if left:
            podman("rmi", *left, check=False)
        shutil.rmtree(ROOT / STAGE, ignore_errors=True)


def test_image_config(image):
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/local/bin/keel"] and config["Cmd"] == ["serve"]
    assert config["WorkingDir"] == "/var/lib/keel"
    assert {"8000/tcp", "8001/tcp", "8002/tcp"} <= set(config["ExposedPorts"])
    # Built in docker format: the OCI format would drop the health check.
    assert "/v2/health/ready" in " ".join(image["Healthcheck"]["Test"])
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["KEEL_ORT_LIBRARY"] == "/opt/onnxruntime/lib/" + Path(ort_library()).name
    assert env["KEEL_MODEL_REPOSITORY"] == "/models"
    # Image size (also in deploy/README.md for the release build). The debug build's binary, stripped,
    # is about 55 MB of it.
    print(f"{TAG}: {image['Size'] / 1e6:.0f} MB")
    assert image["Size"] < 400e6


class Rootfs:
    """The image's filesystem in a folder, with what a container runtime would add: a fresh /proc (when the
    kernel lets us mount one) and the basic device nodes. No bind mount, so removing the folder is safe."""

    def __init__(self, image_name: str, dest: Path):
        self.path = dest
        self.proc_mounted = False
        dest.mkdir()
        cid = podman("create", image_name).strip()
        try:
            subprocess.run(["bash", "-o", "pipefail", "-c", 'podman export "$1" | tar -x --numeric-owner -C "$2"',
                            "export", cid, str(dest)], check=True, capture_output=True, timeout=300)
        finally:
            podman("rm", "--force", cid, check=False)
        dev = dest / "dev"
        dev.mkdir(exist_ok=True)
        for name, minor in [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)]:
            try:
                os.mknod(dev / name, 0o20666, os.makedev(1, minor))
                os.chmod(dev / name, 0o666)
            except OSError:
                pass  # exists, or no CAP_MKNOD here: keel needs none of them to serve
        self.proc_mounted = subprocess.run(["mount", "-t", "proc", "proc", str(dest / "proc")],
                                           capture_output=True).returncode == 0

    def remove(self):
        if self.proc_mounted:
            if subprocess.run(["umount", str(self.path / "proc")]).returncode != 0:
                subprocess.run(["umount", "--lazy", str(self.path / "proc")])
            if os.path.ismount(self.path / "proc"):
                return  # leave it rather than delete through a mount
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def rootfs(image, tmp_path):
    fs = Rootfs(TAG, tmp_path / "rootfs")
    yield fs
    fs.remove()


def test_image_serves_as_its_user(image, rootfs):
    config = image["Config"]
    env = dict(e.split("=", 1) for e in config["Env"])
    passwd = {line.split(":")[2]: line.split(":") for line in (rootfs.path / "etc/passwd").read_text().splitlines()}
    uid, gid = config["User"].split(":")
    assert passwd[uid][0] == "keel" and passwd[uid][5] == config["WorkingDir"]
    env.setdefault("HOME", passwd[uid][5])
    env["NO_COLOR"] = "1"
    # What `podman run IMAGE` would start, on free loopback ports (chroot shares the host's network).
    argv = [*config["Entrypoint"], *config["Cmd"], "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0",
            "--metrics-addr", "127.0.0.1:0", "--prediction-log-dir", "/var/lib/keel/predictions"]
    proc = subprocess.Popen(
        [shutil.which("chroot") or "/usr/sbin/chroot", f"--userspec={uid}:{gid}", "--groups=", str(rootfs.path),
         "/usr/bin/env", "-i", "-C", config["WorkingDir"], *(f"{k}={v}" for k, v in env.items()), *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={})
    log: list[str] = []
    try:
        addrs = None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            log.append(line)
            if m := re.search(r"http_addr=(\S+) grpc_addr=(\S+) metrics_addr=(\S+)", line):
                addrs = m.groups()
                break
            if time.monotonic() > deadline:
                break
        assert addrs, "keel in the image did not start:\n" + "".join(log)
        threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
        http, _grpc, metrics = addrs

        # It runs as the image's user, not as root.
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
        assert re.search(rf"^Gid:\s+{gid}\s+{gid}\s+{gid}\s+{gid}$", status, re.M), status
        assert re.search(r"^Groups:\s*$", status, re.M), status
        assert "ONNX Runtime loaded" in "".join(log)

        assert requests.get(f"http://{http}/v2/health/ready", timeout=10).status_code == 200
        request = json.loads((ROOT / "tests/data/example_request.json").read_text())
        r = requests.post(f"http://{http}/v2/models/breast-cancer/infer", json=request, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "breast-cancer"
        outputs = {o["name"]: o for o in body["outputs"]}
        # The same answer as onnxruntime's own Python API on that version of the model.
        features = np.array(request["inputs"][0]["data"], dtype=np.float32).reshape(1, 30)
        ref = reference(ROOT / "models/breast-cancer" / body["model_version"] / "model.onnx", {"input": features})
        np.testing.assert_array_equal(outputs["label"]["data"], ref["label"].ravel())
        np.testing.assert_allclose(outputs["probabilities"]["data"], ref["probabilities"].ravel(), rtol=1e-5)

        scrape = requests.get(f"http://{metrics}/metrics", timeout=10)
        assert scrape.status_code == 200
        assert re.search(r'^keel_inference_requests_total\{[^}]*model="breast-cancer"[^}]*\} 1$', scrape.text, re.M), \
            scrape.text[:3000]
        assert "keel_model_version_info" in scrape.text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(log)
        # The prediction log's folder is the keel user's: the logged row reached a Parquet file there.
        written = list((rootfs.path / "var/lib/keel/predictions").rglob("*.parquet"))
        assert written, "".join(log)
        assert all(p.stat().st_uid == int(uid) for p in written)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
