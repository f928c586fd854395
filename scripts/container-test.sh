#!/usr/bin/env bash
# Builds the project's Dockerfile with podman, runs the image, waits for its health
# check and holds one spoken turn through it with the project's Python client
# (`voice call` over the WebSocket, tests/data/weather.wav): the transcript must name
# the weather in Paris and reply audio must come back. Prints the image size and the
# build time.
#
#   scripts/container-test.sh              build (layer cache allowed), run, talk
#   scripts/container-test.sh --no-cache   a cold build (the base image is kept)
#
# As root it does everything itself, idempotently:
#   - apt-get installs podman, runc and debootstrap;
#   - sets, in /etc/containers/containers.conf (other settings are kept), the runc
#     runtime, the cgroupfs cgroup manager and `default_ulimits = []` (the defaults ask
#     for more open files than some machines allow);
#   - makes the base image docker.io/library/debian:bookworm-slim locally with
#     `debootstrap --variant=minbase bookworm` and `podman import`, unless it exists,
#     so that the Dockerfile's FROM resolves with no registry. When the machine reaches
#     the package registries through a TLS-inspecting proxy, set PIP_CERT (or
#     SSL_CERT_FILE) to its CA bundle: the bundle is copied into that base image, which
#     gets PIP_CERT, SSL_CERT_FILE and REQUESTS_CA_BUNDLE pointing at it, and apt's
#     https trusts it too; the Dockerfile itself stays the one built anywhere.
# Builds and the container use the host's network (--network host).
#
# Environment: VOICE_IMAGE (default voice-assistant:test), DEBIAN_MIRROR (default
# http://deb.debian.org/debian), VOICE_KEEP_CONTAINER=1 to leave the container running.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${VOICE_IMAGE:-voice-assistant:test}
base=docker.io/library/debian:bookworm-slim
cache_tag=localhost/voice-assistant-build-cache:latest
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${PIP_CERT:-${SSL_CERT_FILE:-}}
ca_in_image=/usr/local/share/ca-certificates/build-host-ca-bundle.crt
build_flags=()
[ "${1:-}" = "--no-cache" ] && build_flags+=(--no-cache)

say() { echo "container-test: $*"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
pm() { podman --runtime runc --cgroup-manager cgroupfs "$@"; }

install_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" != 0 ]; then
    say "please install (as root): ${missing[*]}" >&2
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# Sets [containers] default_ulimits and [engine] runtime / cgroup_manager in
# containers.conf, keeping every other line; writes only when something changes.
configure_podman() {
  local conf=/etc/containers/containers.conf
  [ "$(id -u)" = 0 ] || { say "not root: leaving $conf as it is"; return; }
  mkdir -p "$(dirname "$conf")"
  python3 - "$conf" <<'PY'
import pathlib
import re
import sys

path = pathlib.Path(sys.argv[1])
wanted = {
    "containers": {"default_ulimits": "[]"},
    "engine": {"runtime": '"runc"', "cgroup_manager": '"cgroupfs"'},
}
old = path.read_text().splitlines() if path.exists() else []
out: list[str] = []
section = None
done: set[tuple[str, str]] = set()
skipping_array = False


def add_missing(name: str | None) -> None:
    for key, value in wanted.get(name or "", {}).items():
        if (name, key) not in done:
            out.append(f"{key} = {value}")
            done.add((name, key))


for line in old:
    if skipping_array:  # the rest of a multi-line value being replaced
        skipping_array = "]" not in line
        continue
    header = re.match(r"\s*\[([A-Za-z0-9_.]+)\]\s*(#.*)?$", line)
    if header:
        add_missing(section)
        section = header.group(1)
        out.append(line)
        continue
    setting = re.match(r"\s*([A-Za-z0-9_]+)\s*=\s*(.*)$", line)
    if setting and setting.group(1) in wanted.get(section or "", {}):
        key = setting.group(1)
        out.append(f"{key} = {wanted[section][key]}")
        done.add((section, key))
        value = setting.group(2).split("#")[0].strip()
        skipping_array = value.startswith("[") and "]" not in value
        continue
    out.append(line)
add_missing(section)
for name in wanted:
    if any((name, key) not in done for key in wanted[name]):
        out += ["", f"[{name}]"]
        add_missing(name)
new = "\n".join(out).lstrip("\n") + "\n"
if not path.exists() or path.read_text() != new:
    path.write_text(new)
    print(f"container-test: updated {path}")
PY
}

# A local equivalent of the official debian:bookworm-slim image.
make_base_image() {
  if pm image exists "$base"; then
    say "base image $base is there"
    return
  fi
  [ "$(id -u)" = 0 ] || { say "debootstrap needs root" >&2; exit 1; }
  local started rootfs
  started=$(now)
  rootfs=$(mktemp -d /var/tmp/bookworm-rootfs.XXXXXX)
  say "making $base with debootstrap (a few minutes)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; exit 1; }
  # What the official slim image does: no docs, man pages or locales; apt caches
  # cleaned after each install; the same apt sources.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'APT::AutoRemove::SuggestsImportant "false";' \
    >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
  local changes=(--change 'CMD ["bash"]')
  if [ -n "$ca_bundle" ] && [ -f "$ca_bundle" ]; then
    # The proxy's CA: for pip and Python (the variables), and for apt's https, which
    # reads /etc/ssl/certs/ca-certificates.crt; the ca-certificates package, if a build
    # installs it, rebuilds that file and keeps this one, as a local certificate.
    install -D -m 644 "$ca_bundle" "$rootfs$ca_in_image"
    install -D -m 644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    changes+=(--change "ENV PIP_CERT=$ca_in_image"
              --change "ENV SSL_CERT_FILE=$ca_in_image"
              --change "ENV REQUESTS_CA_BUNDLE=$ca_in_image")
  fi
  tar --numeric-owner -C "$rootfs" -c . | pm import "${changes[@]}" - "$base" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  say "base image made in $(elapsed "$started" "$(now)") s"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install_tools
configure_podman
make_base_image

say "building $image from Dockerfile ${build_flags[*]}"
build_started=$(now)
pm build --network host --format docker "${build_flags[@]}" -t "$image" -f Dockerfile . \
  >/tmp/container-test-build.$$.log 2>&1 || { tail -40 /tmp/container-test-build.$$.log >&2; exit 1; }
build_s=$(elapsed "$build_started" "$(now)")
rm -f /tmp/container-test-build.$$.log
# Keep the build stage (the installed dependencies) as the layer cache of the next run,
# under a tag of its own, and drop the untagged images that earlier runs left behind.
pm build --network host --format docker --target build -t "$cache_tag" -f Dockerfile . \
  >/dev/null 2>&1
pm image prune -f >/dev/null
size_mb=$(pm image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f", $1 / 1e6}')
say "built in $build_s s; image size $size_mb MB"

[ -x .venv/bin/voice ] || scripts/setup.sh
port=$(free_port)
name=voice-container-test-$$
work=$(mktemp -d)
cleanup() {
  if [ "${VOICE_KEEP_CONTAINER:-0}" != 1 ]; then pm rm -f -t 5 "$name" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

say "starting $name on port $port"
run_started=$(now)
# With no systemd here, podman cannot time the image's HEALTHCHECK (it says so on
# stderr, kept out of sight); the loop below runs it instead, with `podman healthcheck run`.
# the image binds 0.0.0.0, which needs API keys (docs/security.md): one made up here
key="container-test-$(date +%s)-$RANDOM"
pm run -d --name "$name" --network host -e VOICE_PORT="$port" -e VOICE_API_KEYS="$key" "$image" \
  >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; exit 1; }
healthy=0
for _ in $(seq 1 240); do
  if [ "$(pm inspect --format '{{.State.Running}}' "$name")" != true ]; then break; fi
  if pm healthcheck run "$name" >/dev/null 2>&1; then healthy=1; break; fi
  sleep 0.5
done
if [ "$healthy" != 1 ]; then
  say "the container did not become healthy; its log:" >&2
  pm logs "$name" 2>&1 | tail -40 >&2
  exit 1
fi
healthy_s=$(elapsed "$run_started" "$(now)")
say "healthy after $healthy_s s (HEALTHCHECK: python urllib against /healthz)"

.venv/bin/voice call --url "http://127.0.0.1:$port" tests/data/weather.wav \
  --token "$key" --out "$work/reply.wav" | tee "$work/call.txt"
heard=$(grep '^you:' "$work/call.txt" | tr 'A-Z' 'a-z' || true)
case "$heard" in
  *weather*paris*) ;;
  *) say "FAILED: the transcript does not name the weather in Paris: '$heard'" >&2; exit 1 ;;
esac
grep -q '^assistant:' "$work/call.txt" || { say "FAILED: no reply text" >&2; exit 1; }
reply_s=$(.venv/bin/python - "$work/reply.wav" <<'PY'
import sys

import numpy as np
import soundfile

audio, rate = soundfile.read(sys.argv[1], dtype="float32")
loud = float(np.sqrt(np.mean(np.square(audio)))) if len(audio) else 0.0
print(f"{len(audio) / rate:.2f}" if loud > 0.01 else "0")
PY
)
if [ "$reply_s" = 0 ] || [ "$reply_s" = "0.00" ]; then
  say "FAILED: no audible reply audio came back" >&2
  exit 1
fi
say "PASSED: a spoken turn through the container; reply audio ${reply_s} s"
say "image $image: $size_mb MB, build $build_s s ${build_flags[*]}, healthy after $healthy_s s"
