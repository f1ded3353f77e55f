#!/usr/bin/env bash
# `make run`: a local two-region edge as plain processes — the fake LLM upstream, the control
# plane and one Envoy per region (hk, sg) — with working defaults. Every port can be
# overridden by environment variables. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

HK_PORT=${LLMEDGE_HK_PORT:-10000}
SG_PORT=${LLMEDGE_SG_PORT:-10001}
HK_ADMIN=${LLMEDGE_HK_ADMIN_PORT:-9901}
SG_ADMIN=${LLMEDGE_SG_ADMIN_PORT:-9902}
XDS_PORT=${LLMEDGE_XDS_PORT:-18000}
HTTP_PORT=${LLMEDGE_HTTP_PORT:-18080}
FAKE_PORT=${LLMEDGE_FAKE_PORT:-8090}
ROUTES_SRC=${LLMEDGE_ROUTES:-examples/routes.yaml}

RUN=$ROOT/.run
mkdir -p "$RUN/logs"
ROUTES=$RUN/routes.yaml
ENVOY=$ROOT/.tools/bin/envoy
[ -x "$ENVOY" ] || { echo "run.sh: $ENVOY missing; run 'make tools'" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$HK_PORT" "$SG_PORT" "$HK_ADMIN" "$SG_ADMIN" "$XDS_PORT" "$HTTP_PORT" "$FAKE_PORT"; do
	port_free "$p" || { echo "run.sh: port $p is in use (another 'make run'? set LLMEDGE_*_PORT to move it)" >&2; exit 1; }
done

# The routes YAML the control plane watches is a copy in .run/, with the demo ports filled
# in, so editing it live never touches the tracked example.
if [ ! -f "$ROUTES" ] || [ -n "${LLMEDGE_ROUTES:-}" ] || [ "$ROUTES_SRC" -nt "$ROUTES" ]; then
	sed -e "s/127.0.0.1:10000/127.0.0.1:$HK_PORT/; s/127.0.0.1:10001/127.0.0.1:$SG_PORT/; s#http://127.0.0.1:8090#http://127.0.0.1:$FAKE_PORT#" \
		"$ROUTES_SRC" >"$ROUTES"
fi
bin/llmedge validate --config "$ROUTES"

pids=()
cleanup() {
	trap - INT TERM EXIT
	echo
	echo "stopping..."
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	echo "stopped"
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

start() { # name, command...
	local name=$1; shift
	"$@" >"$RUN/logs/$name.log" 2>&1 &
	pids+=($!)
}

wait_http() { # url, what
	for _ in $(seq 1 300); do
		if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "run.sh: $2 did not become ready; see $RUN/logs/" >&2
	exit 1
}

start fakellm bin/fakellm --listen "127.0.0.1:$FAKE_PORT" --name fakellm
start controlplane bin/llmedge controlplane --config "$ROUTES" \
	--xds-listen "127.0.0.1:$XDS_PORT" --http-listen "127.0.0.1:$HTTP_PORT" --log-format json
wait_http "http://127.0.0.1:$FAKE_PORT/_fake/healthz" "the fake upstream"
wait_http "http://127.0.0.1:$HTTP_PORT/readyz" "the control plane"
for region in hk sg; do
	admin=$HK_ADMIN; [ "$region" = sg ] && admin=$SG_ADMIN
	bin/llmedge bootstrap --region "$region" --admin-port "$admin" --xds "127.0.0.1:$XDS_PORT" >"$RUN/envoy-$region.yaml"
	start "envoy-$region" "$ENVOY" -c "$RUN/envoy-$region.yaml" --disable-hot-restart --concurrency 2 -l warning
done
wait_http "http://127.0.0.1:$HK_ADMIN/ready" "Envoy hk"
wait_http "http://127.0.0.1:$SG_ADMIN/ready" "Envoy sg"

cat >"$RUN/edge.json" <<JSON
{
  "regions": {
    "hk": {"edge": "http://127.0.0.1:$HK_PORT", "admin": "http://127.0.0.1:$HK_ADMIN"},
    "sg": {"edge": "http://127.0.0.1:$SG_PORT", "admin": "http://127.0.0.1:$SG_ADMIN"}
  },
  "control_plane": {"xds": "127.0.0.1:$XDS_PORT", "status": "http://127.0.0.1:$HTTP_PORT/status"},
  "fake_upstream": "http://127.0.0.1:$FAKE_PORT",
  "routes_yaml": "$ROUTES",
  "logs": "$RUN/logs"
}
JSON

cat <<BANNER

  llmedge is running: two regions, fake LLM upstream (no provider keys needed)

  region hk   edge http://127.0.0.1:$HK_PORT    admin http://127.0.0.1:$HK_ADMIN
  region sg   edge http://127.0.0.1:$SG_PORT    admin http://127.0.0.1:$SG_ADMIN
  status      http://127.0.0.1:$HTTP_PORT/status   (metrics: /metrics)
  routes YAML $ROUTES  (edit it: changes go live on save)
  logs        $RUN/logs/      facts for scripts: $RUN/edge.json

  Try:
    curl -s http://127.0.0.1:$HK_PORT/openai/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'
    curl -sN http://127.0.0.1:$SG_PORT/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse \\
      -H 'content-type: application/json' -d '{"contents":[{"parts":[{"text":"hello"}]}]}'

  Ctrl-C stops everything.
BANNER

wait -n "${pids[@]}" || true
echo "run.sh: a component exited; see $RUN/logs/" >&2
exit 1
