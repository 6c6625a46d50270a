#!/usr/bin/env bash
# Installs Triton's perf_analyzer (CPU use only) under DEST, for tests/test_perf_analyzer.py and
# benches/perf_analyzer.sh. Nothing is installed system-wide and no root is needed once apt's package
# lists exist.
#
#   benches/install-perf-analyzer.sh DEST        then DEST/bin/perf_analyzer --version
#
# Where the pieces come from (all public registries):
#   perf_analyzer   the binary inside the tritonclient 2.51.0 manylinux wheel (PyPI); 2.51.0 is the newest
#                   build that runs on Debian 12's glibc 2.36. PyPI's "perf-analyzer" is only a placeholder.
#   libcudart.so.12 the nvidia-cuda-runtime-cu12 wheel (PyPI): perf_analyzer links it even for CPU use.
#   libb64.so.0d    Debian's libb64-0d package, unpacked with dpkg -x instead of installed.
# DEST/bin/perf_analyzer is a wrapper that points LD_LIBRARY_PATH at DEST/lib.
# Environment: PYTHON (default python3, needs pip), TRITONCLIENT_VERSION, CUDART_VERSION.
set -euo pipefail

TRITONCLIENT_VERSION=${TRITONCLIENT_VERSION:-2.51.0}
CUDART_VERSION=${CUDART_VERSION:-12.9.79}
PYTHON=${PYTHON:-python3}

fail() { echo "install-perf-analyzer: $*" >&2; exit 1; }
[ $# -eq 1 ] || fail "usage: $0 DEST"
mkdir -p "$1/bin" "$1/lib" "$1/libexec"
dest=$(cd "$1" && pwd)
stamp="$dest/.installed"
want="tritonclient==$TRITONCLIENT_VERSION nvidia-cuda-runtime-cu12==$CUDART_VERSION"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$dest/bin/perf_analyzer" --version >/dev/null 2>&1; then
  exit 0
fi
[ "$(uname -m)" = x86_64 ] || fail "the tritonclient wheel carries an x86_64 binary only (this is $(uname -m))"
"$PYTHON" -m pip --version >/dev/null 2>&1 || fail "$PYTHON has no pip (set PYTHON to one that has)"
command -v dpkg >/dev/null || fail "dpkg not found: libb64-0d comes from Debian's archive"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Wheels for the manylinux platform, whatever the local Python is: only files are taken out of them.
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --python-version 3.11 \
  --dest "$work" "tritonclient==$TRITONCLIENT_VERSION" "nvidia-cuda-runtime-cu12==$CUDART_VERSION" \
  || fail "pip download failed (is PyPI reachable?)"

# extract WHEEL_GLOB MEMBER TARGET MODE
extract() {
  "$PYTHON" - "$@" <<'EOF' || fail "cannot take $2 out of $1"
import glob, os, sys, zipfile
pattern, member, target, mode = sys.argv[1:5]
wheels = glob.glob(pattern)
if len(wheels) != 1:
    sys.exit(f"expected one wheel matching {pattern}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel, open(target, "wb") as out:
    out.write(wheel.read(member))
os.chmod(target, int(mode, 8))
EOF
}
extract "$work/tritonclient-$TRITONCLIENT_VERSION-*.whl" \
  "tritonclient-$TRITONCLIENT_VERSION.data/data/bin/perf_analyzer" "$dest/libexec/perf_analyzer" 755
extract "$work/nvidia_cuda_runtime_cu12-$CUDART_VERSION-*.whl" \
  "nvidia/cuda_runtime/lib/libcudart.so.12" "$dest/lib/libcudart.so.12" 644

# libb64: the system's copy if it has one, else the Debian package unpacked (apt-get download needs no root,
# but it needs package lists; refreshing them does).
if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
  if ! (cd "$work" && apt-get download -qq libb64-0d >/dev/null 2>&1); then
    [ "$(id -u)" = 0 ] || fail "apt has no libb64-0d in its lists; run: sudo apt-get update   (or: sudo apt-get install libb64-0d)"
    apt-get update -qq >/dev/null
    (cd "$work" && apt-get download -qq libb64-0d) || fail "apt-get download libb64-0d failed"
  fi
  dpkg -x "$work"/libb64-0d_*.deb "$work/deb"
  cp -a "$work"/deb/usr/lib/*/libb64.so.0d* "$dest/lib/"
fi

cat >"$dest/bin/perf_analyzer" <<EOF
#!/bin/sh
# Written by benches/install-perf-analyzer.sh: perf_analyzer with its libraries from $dest/lib.
LD_LIBRARY_PATH="$dest/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dest/libexec/perf_analyzer" "\$@"
EOF
chmod 755 "$dest/bin/perf_analyzer"

missing=$(LD_LIBRARY_PATH="$dest/lib" ldd "$dest/libexec/perf_analyzer" | awk '/not found/ {print $1}' | xargs)
[ -z "$missing" ] || fail "perf_analyzer still lacks: $missing"
"$dest/bin/perf_analyzer" --version >/dev/null 2>&1 || fail "perf_analyzer does not run"
echo "$want" >"$stamp"
echo "perf_analyzer installed in $dest"
