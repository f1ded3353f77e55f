#!/usr/bin/env bash
# Installs the peers the data-path benchmark (go run ./bench/datapath) compares llmedge with,
# from their package registries, into bench/peers/.cache/ (git-ignored):
#
#   portkey/  the Portkey AI gateway, npm @portkey-ai/gateway (node)
#   litellm/  the LiteLLM proxy, PyPI litellm[proxy] in a virtualenv
#
# Idempotent: a peer whose pinned version is already installed is skipped. A peer that fails
# to install does not fail the script: the error goes to .cache/<peer>.install.log and the
# benchmark reports that peer as not installed, with that log's tail, instead of dropping it.
#
# Versions are pinned exactly:
#   - @portkey-ai/gateway 1.15.2: the newest the npm registry serves.
#   - litellm 1.82.6: litellm 1.82.7 and 1.82.8 on PyPI were a supply-chain compromise
#     (published 2026-03-24 with a stolen publish token; credential stealer, removed from
#     PyPI). 1.82.6 is the last release before them, one of the releases LiteLLM audited
#     and declared clean (v1.78.0-v1.82.6), and the version most downstream projects pinned
#     in response. The registry also no longer serves 1.107.0 (reported compromised as
#     well), so nothing newer is taken on trust either.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
CACHE=${BENCH_PEERS_DIR:-$PWD/.cache}
PORTKEY_VERSION=${PORTKEY_VERSION:-1.15.2}
LITELLM_VERSION=${LITELLM_VERSION:-1.82.6}
case "$LITELLM_VERSION" in
1.82.7 | 1.82.8 | 1.107.*)
	echo "install.sh: litellm $LITELLM_VERSION is a known-compromised release; refusing" >&2
	exit 1
	;;
esac
mkdir -p "$CACHE"

install_portkey() {
	local dir=$CACHE/portkey
	if [ -f "$dir/.installed-$PORTKEY_VERSION" ]; then
		echo "portkey: @portkey-ai/gateway $PORTKEY_VERSION already installed"
		return 0
	fi
	command -v npm >/dev/null || { echo "npm not found (Node.js is needed for the Portkey gateway)"; return 1; }
	rm -rf "$dir" && mkdir -p "$dir" || return 1
	echo "portkey: npm install @portkey-ai/gateway@$PORTKEY_VERSION"
	(cd "$dir" && npm init -y >/dev/null &&
		npm install --no-audit --no-fund --save-exact "@portkey-ai/gateway@$PORTKEY_VERSION") || return 1
	touch "$dir/.installed-$PORTKEY_VERSION"
}

install_litellm() {
	local dir=$CACHE/litellm
	if [ -f "$dir/.installed-$LITELLM_VERSION" ]; then
		echo "litellm: litellm[proxy]==$LITELLM_VERSION already installed"
		return 0
	fi
	command -v python3 >/dev/null || { echo "python3 not found"; return 1; }
	rm -rf "$dir" || return 1
	echo "litellm: python3 -m venv + pip install litellm[proxy]==$LITELLM_VERSION"
	python3 -m venv "$dir" || return 1
	"$dir/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" || return 1
	# The compromised 1.82.8 shipped a litellm_init.pth that runs at every Python start: make
	# sure nothing like it is in this environment.
	if find "$dir/lib" -name '*.pth' -print0 | xargs -0 -r grep -l -E 'base64|exec\(|subprocess' 2>/dev/null | grep -q .; then
		echo "litellm: a .pth file in $dir runs code at Python start; refusing to use this install"
		return 1
	fi
	touch "$dir/.installed-$LITELLM_VERSION"
}

status=0
for peer in portkey litellm; do
	log=$CACHE/$peer.install.log
	if "install_$peer" >"$log" 2>&1; then
		grep -E "^$peer: " "$log" | tail -n 1
		rm -f "$CACHE/$peer.install-failed"
	else
		echo "install.sh: $peer could not be installed; the benchmark reports it as such (see $log):" >&2
		tail -n 5 "$log" >&2
		cp "$log" "$CACHE/$peer.install-failed"
		status=1
	fi
done
# A peer that fails is reported by the benchmark, not fatal to `make bench`.
[ "${BENCH_PEERS_STRICT:-0}" = 1 ] && exit $status
exit 0
