#!/usr/bin/env bash
# `make run`: a local two-region edge as plain processes — Redis, the fake LLM upstream, the
# control plane, and per region (hk, sg) an envoyproxy/ratelimit, an extauthz and an Envoy —
# with working defaults and a demo caller token (600 requests a minute). Every port can be overridden by environment variables. Where
# OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY are set, that upstream points at the
# real provider with that key instead of the fake. Ctrl-C stops everything.
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
HK_AUTHZ=${LLMEDGE_HK_AUTHZ_PORT:-10100}
SG_AUTHZ=${LLMEDGE_SG_AUTHZ_PORT:-10101}
HK_AUTHZ_HTTP=${LLMEDGE_HK_AUTHZ_HTTP_PORT:-10200}
SG_AUTHZ_HTTP=${LLMEDGE_SG_AUTHZ_HTTP_PORT:-10201}
HK_RL=${LLMEDGE_HK_RATELIMIT_PORT:-10300}
SG_RL=${LLMEDGE_SG_RATELIMIT_PORT:-10301}
HK_RL_HTTP=${LLMEDGE_HK_RATELIMIT_HTTP_PORT:-10400}
SG_RL_HTTP=${LLMEDGE_SG_RATELIMIT_HTTP_PORT:-10401}
REDIS_PORT=${LLMEDGE_REDIS_PORT:-16379}
ROUTES_SRC=${LLMEDGE_ROUTES:-examples/routes.yaml}

# LLMEDGE_RUN_DIR and LLMEDGE_BIN_DIR let tests run this same stack elsewhere.
RUN=${LLMEDGE_RUN_DIR:-$ROOT/.run}
BIN=${LLMEDGE_BIN_DIR:-$ROOT/bin}
mkdir -p "$RUN/logs"
ROUTES=$RUN/routes.yaml
ENVOY=$ROOT/.tools/bin/envoy
[ -x "$ENVOY" ] || { echo "run.sh: $ENVOY missing; run 'make tools'" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$HK_PORT" "$SG_PORT" "$HK_ADMIN" "$SG_ADMIN" "$XDS_PORT" "$HTTP_PORT" "$FAKE_PORT" \
	"$HK_AUTHZ" "$SG_AUTHZ" "$HK_AUTHZ_HTTP" "$SG_AUTHZ_HTTP" "$HK_RL" "$SG_RL" "$HK_RL_HTTP" "$SG_RL_HTTP" \
	"$REDIS_PORT" "$((HK_RL_HTTP + 100))" "$((SG_RL_HTTP + 100))"; do
	port_free "$p" || { echo "run.sh: port $p is in use (another 'make run'? set LLMEDGE_*_PORT to move it)" >&2; exit 1; }
done

# The demo caller's token is minted once and kept (mode 0600) in .run/, so a second
# `make run` keeps working with the token printed the first time.
TOKEN_FILE=$RUN/demo-token.json
if [ ! -s "$TOKEN_FILE" ]; then
	(umask 077 && "$BIN/llmedge" token new --caller demo --json >"$TOKEN_FILE")
fi
TOKEN=$(sed -n 's/.*"token":"\([^"]*\)".*/\1/p' "$TOKEN_FILE")
DIGEST=$(sed -n 's/.*"digest":"\([^"]*\)".*/\1/p' "$TOKEN_FILE")

# The routes YAML the control plane watches is a copy in .run/, with the demo ports and
# the demo caller filled in, so editing it live never touches the tracked example.
if [ ! -f "$ROUTES" ] || [ -n "${LLMEDGE_ROUTES:-}" ] || [ "$ROUTES_SRC" -nt "$ROUTES" ] || ! grep -q "$DIGEST" "$ROUTES"; then
	{
		sed -e "s/127.0.0.1:10000/127.0.0.1:$HK_PORT/; s/127.0.0.1:10001/127.0.0.1:$SG_PORT/" \
			-e "s/127.0.0.1:10100/127.0.0.1:$HK_AUTHZ/; s/127.0.0.1:10101/127.0.0.1:$SG_AUTHZ/" \
			-e "s/127.0.0.1:10300/127.0.0.1:$HK_RL/; s/127.0.0.1:10301/127.0.0.1:$SG_RL/" \
			-e "s#http://127.0.0.1:8090#http://127.0.0.1:$FAKE_PORT#" "$ROUTES_SRC"
		cat <<YAML

callers:
  demo:
    tokens: [$DIGEST]
    upstreams: [openai, anthropic, gemini]
    limits:
      - {requests: 600, per: minute}
YAML
	} >"$ROUTES"
fi
"$BIN/llmedge" validate --config "$ROUTES"

# Upstream keys: one file per key under .run/keys/<upstream>/. The fake accepts any key; a
# provider key from the environment switches that upstream to the real provider (through
# an environment override of its url, so the routes YAML stays as it is).
KEYS=$RUN/keys
real=()
provider() { # upstream, env var, real url
	local up=$1 var=$2 url=$3
	mkdir -p "$KEYS/$up"
	if [ -n "${!var:-}" ]; then
		(umask 077 && printf '%s\n' "${!var}" >"$KEYS/$up/from-env")
		rm -f "$KEYS/$up/demo"
		export "LLMEDGE_UPSTREAMS_${up^^}_URL=$url"
		real+=("$up")
	else
		(umask 077 && echo "demo-key-for-the-fake-upstream" >"$KEYS/$up/demo")
		rm -f "$KEYS/$up/from-env"
	fi
}
provider openai OPENAI_API_KEY https://api.openai.com
provider anthropic ANTHROPIC_API_KEY https://api.anthropic.com
provider gemini GEMINI_API_KEY https://generativelanguage.googleapis.com

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

# Redis first: envoyproxy/ratelimit exits when Redis does not answer at its start.
REDIS=$ROOT/.tools/bin/redis-server
mkdir -p "$RUN/redis"
start redis "$REDIS" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$RUN/redis"
for _ in $(seq 1 100); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; then break; fi
	sleep 0.1
done

start fakellm "$BIN/fakellm" --listen "127.0.0.1:$FAKE_PORT" --name fakellm
start controlplane "$BIN/llmedge" controlplane --config "$ROUTES" \
	--xds-listen "127.0.0.1:$XDS_PORT" --http-listen "127.0.0.1:$HTTP_PORT" --log-format json
wait_http "http://127.0.0.1:$FAKE_PORT/_fake/healthz" "the fake upstream"
wait_http "http://127.0.0.1:$HTTP_PORT/readyz" "the control plane"
start extauthz-hk "$BIN/llmedge" extauthz --region hk --xds "127.0.0.1:$XDS_PORT" --keys-dir "$KEYS" \
	--grpc-listen "127.0.0.1:$HK_AUTHZ" --http-listen "127.0.0.1:$HK_AUTHZ_HTTP"
start extauthz-sg "$BIN/llmedge" extauthz --region sg --xds "127.0.0.1:$XDS_PORT" --keys-dir "$KEYS" \
	--grpc-listen "127.0.0.1:$SG_AUTHZ" --http-listen "127.0.0.1:$SG_AUTHZ_HTTP"
ratelimit() { # region, grpc port, http port
	env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
		CONFIG_TYPE=GRPC_XDS_SOTW CONFIG_GRPC_XDS_SERVER_URL="127.0.0.1:$XDS_PORT" \
		CONFIG_GRPC_XDS_NODE_ID="ratelimit-$1" CONFIG_GRPC_XDS_NODE_METADATA="region=$1" \
		XDS_CLIENT_BACKOFF_INITIAL_INTERVAL=500ms XDS_CLIENT_BACKOFF_MAX_INTERVAL=5s \
		FORCE_START_WITHOUT_INITIAL_CONFIG=true HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED=true \
		REDIS_SOCKET_TYPE=tcp REDIS_TYPE=SINGLE REDIS_URL="127.0.0.1:$REDIS_PORT" \
		USE_STATSD=false LOG_LEVEL=warn LOG_FORMAT=json \
		HOST=127.0.0.1 PORT="$3" GRPC_HOST=127.0.0.1 GRPC_PORT="$2" DEBUG_HOST=127.0.0.1 DEBUG_PORT="$(($3 + 100))" \
		"$ROOT/.tools/bin/ratelimit"
}
start ratelimit-hk ratelimit hk "$HK_RL" "$HK_RL_HTTP"
start ratelimit-sg ratelimit sg "$SG_RL" "$SG_RL_HTTP"
wait_http "http://127.0.0.1:$HK_RL_HTTP/healthcheck" "ratelimit hk"
wait_http "http://127.0.0.1:$SG_RL_HTTP/healthcheck" "ratelimit sg"
wait_http "http://127.0.0.1:$HK_AUTHZ_HTTP/readyz" "extauthz hk"
wait_http "http://127.0.0.1:$SG_AUTHZ_HTTP/readyz" "extauthz sg"
for region in hk sg; do
	admin=$HK_ADMIN; [ "$region" = sg ] && admin=$SG_ADMIN
	"$BIN/llmedge" bootstrap --region "$region" --admin-port "$admin" --xds "127.0.0.1:$XDS_PORT" >"$RUN/envoy-$region.yaml"
	start "envoy-$region" "$ENVOY" -c "$RUN/envoy-$region.yaml" --disable-hot-restart --concurrency 2 -l warning
done
wait_http "http://127.0.0.1:$HK_ADMIN/ready" "Envoy hk"
wait_http "http://127.0.0.1:$SG_ADMIN/ready" "Envoy sg"

(umask 077 && cat >"$RUN/edge.json" <<JSON
{
  "token": "$TOKEN",
  "regions": {
    "hk": {"edge": "http://127.0.0.1:$HK_PORT", "admin": "http://127.0.0.1:$HK_ADMIN", "extauthz": "http://127.0.0.1:$HK_AUTHZ_HTTP", "ratelimit": "http://127.0.0.1:$HK_RL_HTTP", "ratelimit_debug": "http://127.0.0.1:$((HK_RL_HTTP + 100))"},
    "sg": {"edge": "http://127.0.0.1:$SG_PORT", "admin": "http://127.0.0.1:$SG_ADMIN", "extauthz": "http://127.0.0.1:$SG_AUTHZ_HTTP", "ratelimit": "http://127.0.0.1:$SG_RL_HTTP", "ratelimit_debug": "http://127.0.0.1:$((SG_RL_HTTP + 100))"}
  },
  "control_plane": {"xds": "127.0.0.1:$XDS_PORT", "status": "http://127.0.0.1:$HTTP_PORT/status"},
  "fake_upstream": "http://127.0.0.1:$FAKE_PORT",
  "redis": "127.0.0.1:$REDIS_PORT",
  "routes_yaml": "$ROUTES",
  "keys_dir": "$KEYS",
  "logs": "$RUN/logs"
}
JSON
)

if [ ${#real[@]} -eq 0 ]; then
	UPSTREAMS_NOTE="every upstream is the fake LLM upstream (no provider keys needed)"
else
	UPSTREAMS_NOTE="real provider for: ${real[*]}; the fake LLM upstream for the rest"
fi
cat <<BANNER

  llmedge is running: two regions; $UPSTREAMS_NOTE

  demo caller token (keep it secret):  $TOKEN

  region hk   edge http://127.0.0.1:$HK_PORT    admin http://127.0.0.1:$HK_ADMIN
  region sg   edge http://127.0.0.1:$SG_PORT    admin http://127.0.0.1:$SG_ADMIN
  status      http://127.0.0.1:$HTTP_PORT/status   (metrics: /metrics; limits: http://127.0.0.1:$((HK_RL_HTTP + 100))/rlconfig)
  routes YAML $ROUTES  (edit it: changes go live on save)
  logs        $RUN/logs/      facts for scripts: $RUN/edge.json

  Try:
    export LLMEDGE_TOKEN=$TOKEN
    curl -s http://127.0.0.1:$HK_PORT/openai/v1/chat/completions -H "Authorization: Bearer \$LLMEDGE_TOKEN" \\
      -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'
    curl -sN 'http://127.0.0.1:$SG_PORT/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse' \\
      -H "x-goog-api-key: \$LLMEDGE_TOKEN" -H 'content-type: application/json' -d '{"contents":[{"parts":[{"text":"hello"}]}]}'

  SDKs: base_url http://127.0.0.1:$HK_PORT/openai/v1 (OpenAI), http://127.0.0.1:$HK_PORT/anthropic (Anthropic),
        http://127.0.0.1:$SG_PORT/gemini (Google GenAI), api_key = the token above.

  Ctrl-C stops everything.
BANNER

wait -n "${pids[@]}" || true
echo "run.sh: a component exited; see $RUN/logs/" >&2
exit 1
