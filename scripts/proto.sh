#!/usr/bin/env bash
# Generates the Go code for every proto/**/*.proto next to its source (`make proto`).
#
#   scripts/proto.sh           regenerate in place
#   scripts/proto.sh --check   generate into a temp dir and fail with a diff if the committed
#                              .pb.go files differ (run by proto/drift_test.go in `make test`)
#
# protoc is Debian's protobuf-compiler (installed by `make tools`, linked as .tools/bin/protoc);
# protoc-gen-go is built from the Go module cache at the google.golang.org/protobuf version in
# go.mod, so the generated code always matches the runtime it is compiled against.
#
# The protoc version is written into each file's header ("// 	protoc        v3.21.12"). The check
# ignores that one line, so a machine with another protoc does not report drift that is only
# cosmetic; everything else, including the protoc-gen-go version line, must match exactly.
set -euo pipefail

die() { echo "proto.sh: ERROR: $*" >&2; exit 1; }

check=0
case "${1:-}" in
"") ;;
--check) check=1 ;;
-h | --help)
	sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*) die "unknown argument: $1 (usage: $0 [--check])" ;;
esac

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${LLMEDGE_TOOLS:-$REPO_ROOT/.tools}"
MODULE=github.com/llmedge/llmedge
cd "$REPO_ROOT"

# --- protoc and the well-known type includes --------------------------------------------------
if [ -x "$TOOLS/bin/protoc" ]; then
	PROTOC="$TOOLS/bin/protoc"
elif command -v protoc >/dev/null 2>&1; then
	PROTOC="$(command -v protoc)"
else
	die "protoc not found (looked for $TOOLS/bin/protoc and on PATH): run \`make tools\`"
fi
protoc_ver="$("$PROTOC" --version 2>&1)" || die "$PROTOC --version failed: $protoc_ver"
# protoc's own include dir (<prefix>/bin/protoc -> <prefix>/include) holds google/protobuf/*.proto.
WKT_INCLUDE="${PROTOC_INCLUDE:-$(dirname "$(dirname "$(readlink -f "$PROTOC")")")/include}"
[ -f "$WKT_INCLUDE/google/protobuf/timestamp.proto" ] ||
	die "well-known types not found ($WKT_INCLUDE/google/protobuf/timestamp.proto; Debian package libprotobuf-dev): run \`make tools\`"

# --- protoc-gen-go at go.mod's google.golang.org/protobuf version ----------------------------
command -v go >/dev/null 2>&1 || die "go not found"
pb_ver="$(go list -m -f '{{.Version}}' google.golang.org/protobuf)" ||
	die "go list -m google.golang.org/protobuf failed"
GEN="$TOOLS/bin/protoc-gen-go"
if [ "$("$GEN" --version 2>/dev/null)" != "protoc-gen-go $pb_ver" ]; then
	mkdir -p "$TOOLS/bin"
	gen_tmp="$(mktemp "$TOOLS/bin/.protoc-gen-go.XXXXXX")"
	if ! go build -o "$gen_tmp" google.golang.org/protobuf/cmd/protoc-gen-go; then
		rm -f "$gen_tmp"
		die "go build google.golang.org/protobuf/cmd/protoc-gen-go ($pb_ver) failed"
	fi
	mv -f "$gen_tmp" "$GEN" # atomic, so concurrent runs never see half a binary
fi

# --- generate ----------------------------------------------------------------------------------
mapfile -t protos < <(cd proto && find . -name '*.proto' -type f | sed 's|^\./||' | LC_ALL=C sort)
generate() { # $1: output root (the generated files land in $1/proto/...)
	[ "${#protos[@]}" -eq 0 ] && return 0
	(cd proto && "$PROTOC" --plugin=protoc-gen-go="$GEN" \
		-I . -I "$WKT_INCLUDE" \
		--go_out="$1" --go_opt=module="$MODULE" \
		"${protos[@]}")
}

if [ "$check" -eq 0 ]; then
	case "$protoc_ver" in
	"libprotoc 3.21."*) ;;
	*) echo "proto.sh: WARNING: $PROTOC is $protoc_ver, not Debian's 3.21.x (make tools); the generated headers will say so" >&2 ;;
	esac
	generate "$REPO_ROOT"
	echo "proto.sh: generated ${#protos[@]} file(s) with ${protoc_ver} and protoc-gen-go $pb_ver"
	exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/gen/proto" "$tmp/want" "$tmp/have"
generate "$tmp/gen"
# Compare every .pb.go either side has, with the protoc version header line blanked.
normalise() { sed -E 's@^//[[:space:]]+protoc[[:space:]]+.*$@//	protoc        (version not compared)@' "$1"; }
mapfile -t files < <({
	(cd "$tmp/gen" && find proto -name '*.pb.go' -type f)
	find proto -name '*.pb.go' -type f
} | LC_ALL=C sort -u)
for f in "${files[@]}"; do
	mkdir -p "$tmp/want/$(dirname "$f")" "$tmp/have/$(dirname "$f")"
	if [ -f "$tmp/gen/$f" ]; then normalise "$tmp/gen/$f" >"$tmp/want/$f"; fi
	if [ -f "$f" ]; then normalise "$f" >"$tmp/have/$f"; fi
done
if ! out="$(cd "$tmp" && diff -ruN have want)"; then
	echo "$out"
	echo
	die "generated code is out of date with proto/ (diff above: have = committed, want = generated from the .proto files); run \`make proto\` and commit the result"
fi
echo "proto.sh: ${#files[@]} generated file(s) up to date"
