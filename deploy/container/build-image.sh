#!/usr/bin/env bash
# Builds the Keel image (deploy/container/Containerfile) from what this host has: the keel binary and
# libonnxruntime.so go in through the Containerfile's `host` stage (no Rust or Python image), on a Debian base
# built here with mmdebstrap from Debian's packages (no container registry). `make image` runs it on the release
# build; tests/test_image.py on the debug build. The default `docker build`/`podman build` (no build args)
# still builds everything from source.
#
#   deploy/container/build-image.sh [--keel FILE] [--onnxruntime FILE] [--tag TAG] [--stage DIR] [-- BUILD-ARGS...]
#
#   --keel FILE         the keel binary; the image gets a copy stripped of symbols. Without it: the
#                       Containerfile's release build (pulls docker.io/library/rust).
#   --onnxruntime FILE  libonnxruntime.so.<version> (the pinned wheel's, in .venv). Without it: the Containerfile's
#                       onnxruntime stage (pulls docker.io/library/python).
#   --tag TAG           default keel:latest (podman names it localhost/keel:latest)
#   --stage DIR         where the host files are staged, relative to the repository root and inside the build
#                       context (Containerfile.dockerignore lets target/image/ and target/image-test/ in);
#                       default target/image
#   -- BUILD-ARGS...    passed on to `podman build` / `docker build`
#
# Environment:
#   ENGINE             podman (the default when installed) or docker
#   RUNTIME_BASE       the runtime stage's base. Unset: localhost/keel-base:trixie-slim, built with mmdebstrap on
#                      first use and kept (remove it to refresh: podman rmi localhost/keel-base:trixie-slim);
#                      without mmdebstrap, docker.io/library/debian:trixie-slim as the Containerfile's default.
#   DEBIAN_MIRROR      mmdebstrap's mirror (default http://deb.debian.org/debian)
#   BUILDAH_ISOLATION  podman's isolation for RUN (default here: chroot, which works where the OCI runtime
#                      cannot create containers, e.g. inside another container)
set -euo pipefail

keel="" ort="" tag="keel:latest" stage="target/image"
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel="$2"; shift 2 ;;
    --onnxruntime) ort="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --stage) stage="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
done

# --keel and --onnxruntime relative to the caller's directory, --stage to the repository root.
[ -z "$keel" ] || keel="$(readlink -f "$keel")"
[ -z "$ort" ] || ort="$(readlink -f "$ort")"
for f in "$keel" "$ort"; do
  [ -z "$f" ] || [ -f "$f" ] || { echo "build-image.sh: no such file: $f" >&2; exit 2; }
done
cd "$(dirname "$0")/../.."

engine="${ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman
  elif command -v docker >/dev/null; then engine=docker
  else echo "build-image.sh: neither podman nor docker is installed (Debian: apt-get install podman)" >&2; exit 1
  fi
fi

tar="" staged=""
trap '[ -z "$tar" ] || rm -f "$tar"; [ -z "$staged" ] || rm -rf "$staged"' EXIT

# The packages the runtime stage needs (its RUN installs them with apt when the base lacks them).
debian_release=trixie
packages="ca-certificates,curl,libstdc++6"

# A Debian slim root filesystem like docker.io/library/debian:trixie-slim (minbase; no documentation, man pages
# or translations, also for packages installed later), plus the runtime packages, imported as an image.
build_base() {
  local base="$1"
  tar="$(mktemp --tmpdir keel-base.XXXXXX.tar)"
  echo "building $base with mmdebstrap ($debian_release minbase + ${packages//,/ })"
  # --skip=output/dev: no device nodes in the image (the container runtime provides /dev).
  mmdebstrap --quiet --variant=minbase --format=tar --include="$packages" --skip=output/dev \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/groff/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/linda/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    "$debian_release" "$tar" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  "$engine" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "$tar" "$base" >/dev/null
}

base="${RUNTIME_BASE:-}"
if [ -z "$base" ]; then
  if command -v mmdebstrap >/dev/null; then
    base="localhost/keel-base:$debian_release-slim"
    "$engine" image inspect "$base" >/dev/null 2>&1 || build_base "$base"
  else
    base="docker.io/library/debian:$debian_release-slim"
  fi
fi

args=(--build-arg "RUNTIME_BASE=$base")
if [ -n "$keel" ] || [ -n "$ort" ]; then
  case "$stage" in /*|..*) echo "build-image.sh: --stage must be inside the repository (build context)" >&2; exit 2 ;; esac
  rm -rf "$stage"
  mkdir -p "$stage"
  staged="$stage"  # removed at exit: not left in the context of later plain builds
  args+=(--build-arg "HOST_DIR=$stage")
fi
if [ -n "$keel" ]; then
  # The release profile keeps line tables (Cargo.toml); the image does not need them.
  strip --strip-all -o "$stage/keel" "$keel"
  args+=(--build-arg KEEL_FROM=host)
fi
if [ -n "$ort" ]; then
  name="$(basename "$ort")"
  version="${name#libonnxruntime.so.}"
  if [ "$version" = "$name" ]; then
    echo "build-image.sh: --onnxruntime wants libonnxruntime.so.<version>, got $name" >&2; exit 2
  fi
  install -m 0644 "$ort" "$stage/$name"
  args+=(--build-arg ONNXRUNTIME_FROM=host --build-arg "ONNXRUNTIME_VERSION=$version")
fi

if [ "$engine" = podman ]; then
  # docker format: the OCI format has no HEALTHCHECK.
  args+=(--format docker --isolation "${BUILDAH_ISOLATION:-chroot}"
         --ignorefile deploy/container/Containerfile.dockerignore)
fi
echo "+ $engine build -f deploy/container/Containerfile -t $tag ${args[*]} $* ."
"$engine" build -f deploy/container/Containerfile -t "$tag" "${args[@]}" "$@" .
"$engine" images "$tag"
