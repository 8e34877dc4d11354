#!/usr/bin/env bash
# Smoke test of a running Caracal platform, in plain bash + curl (what CI systems have).
#
# Probes /health and /ready of every service, then the whole flow: registers a target and
# federates it through the gateway at once (no retry: the registry change reaches the gateway
# through caracal.invalidations, or its lookup of a name it does not hold), waits until the
# coordinator has probed it, finds the status event in the audit ledger, has the coordinator
# probe the api over gRPC (grpc.health.v1, service "ready", on the api's own port), runs the
# token flow (creates an STS client with the admin token, gets a scoped token, calls a /v1 API
# with it, revokes it and sees it refused), federates the target through the gateway with a
# metrics:read token (checking its instance's series and identity labels), scrapes each service's /metrics with the bearer
# (and expects 401 without it outside dev mode), and removes the target and the client. Stops
# with a clear line at the first failure (exit 1).
#
# Settings (environment):
#   CARACAL_HOST              host of every service            (127.0.0.1)
#   API_PORT COORDINATOR_PORT AUDIT_PORT STS_PORT GATEWAY_PORT CONTROL_PORT
#                             (3000 4000 9090 8080 8081 8082)
#   METRICS_BEARER_FILE       metrics bearer                   (.caracal/secrets/metrics_bearer)
#   CARACAL_ADMIN_TOKEN_FILE  admin token                      (.caracal/secrets/admin_token)
#   CARACAL_CREDENTIALS_DIR   the gateway's credentials_dir    (.caracal/credentials beside the secrets)
#                             The smoke target's instance (the api) is fail-closed: as an
#                             operator would, the test binds it a credential there (the metrics
#                             bearer, as file smoke-<pid>) and removes it at the end.
#   SMOKE_TIMEOUT             seconds to wait for each step    (60)
set -uo pipefail

host=${CARACAL_HOST:-127.0.0.1}
api="http://$host:${API_PORT:-3000}"
coordinator="http://$host:${COORDINATOR_PORT:-4000}"
audit="http://$host:${AUDIT_PORT:-9090}"
sts="http://$host:${STS_PORT:-8080}"
gateway="http://$host:${GATEWAY_PORT:-8081}"
control="http://$host:${CONTROL_PORT:-8082}"
bearer_file=${METRICS_BEARER_FILE:-.caracal/secrets/metrics_bearer}
admin_file=${CARACAL_ADMIN_TOKEN_FILE:-.caracal/secrets/admin_token}
timeout=${SMOKE_TIMEOUT:-60}
credentials_dir=${CARACAL_CREDENTIALS_DIR:-$(dirname "$bearer_file")/../credentials}

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
ok() { echo "smoke: ok   $*"; }
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
body() { curl -s --max-time 5 "$@"; }

command -v curl >/dev/null || fail "curl is not installed"
[ -r "$bearer_file" ] || fail "cannot read the metrics bearer file $bearer_file (set METRICS_BEARER_FILE)"
[ -r "$admin_file" ] || fail "cannot read the admin token file $admin_file (set CARACAL_ADMIN_TOKEN_FILE)"
bearer=$(head -n1 "$bearer_file" | tr -d '[:space:]')
admin=$(head -n1 "$admin_file" | tr -d '[:space:]')

# Polls until "$@" succeeds or the timeout passes.
eventually() {
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

for service in "sts $sts" "api $api" "coordinator $coordinator" "audit $audit" "gateway $gateway" "control $control"; do
  set -- $service
  [ "$(code "$2/health")" = 200 ] || fail "$1 /health at $2 is not 200"
  [ "$(code "$2/ready")" = 200 ] || fail "$1 /ready at $2 is not 200 (run: caracal status --ready)"
  ok "$1 /health and /ready answer 200"
done

name="smoke-$$-$RANDOM"
credential="smoke-$$"
[ -d "$credentials_dir" ] || fail "no credentials directory $credentials_dir (set CARACAL_CREDENTIALS_DIR to the gateway's credentials_dir)"
(umask 077 && printf '%s\n' "$bearer" >"$credentials_dir/$credential") || fail "cannot write a credential into $credentials_dir"
created=$(code -X POST "$api/v1/targets" -H "authorization: Bearer $admin" -H 'content-type: application/json' \
  -d "{\"name\": \"$name\", \"instances\": [\"$api\"], \"interval_ms\": 500, \"timeout_ms\": 400, \"credential\": \"$credential\"}")
[ "$created" = 201 ] || fail "registering target $name answered $created, not 201"
ok "registered target $name"
instance="${api#http://}"
at_once=$(curl -s --max-time 15 -w '\n%{http_code}' -H "authorization: Bearer $bearer" "$gateway/v1/targets/$name/metrics")
[ "$(tail -n1 <<<"$at_once")" = 200 ] || fail "federating $name right after registering it answered $(tail -n1 <<<"$at_once")"
grep -q "^caracal_federation_up{target=\"$name\",instance=\"$instance\"} 1$" <<<"$at_once" \
  || fail "the gateway did not federate $instance of $name right after it was registered"
ok "the gateway federates $name at once"
client="smoke-$$-$RANDOM"
cleanup() {
  rm -f "$credentials_dir/$credential"
  curl -s -o /dev/null --max-time 5 -X DELETE "$api/v1/targets/$name" -H "authorization: Bearer $admin"
  curl -s -o /dev/null --max-time 5 -X DELETE "$api/v1/targets/$name-grpc" -H "authorization: Bearer $admin"
  curl -s -o /dev/null --max-time 5 -X DELETE "$sts/v1/clients/$client" -H "authorization: Bearer $admin"
}
trap cleanup EXIT

probed() { body "$api/v1/status" -H "authorization: Bearer $admin" | grep -q "\"target\":\"$name\"[^}]*\"status\":\"up\""; }
eventually probed || fail "the coordinator did not report $name up within ${timeout}s (GET $api/v1/status)"
ok "the coordinator probed $name: up"

recorded() { body "$audit/v1/events?target=$name&type=instance.status_changed" -H "authorization: Bearer $admin" | grep -q '"to":"up"'; }
eventually recorded || fail "no instance.status_changed event for $name in the audit ledger within ${timeout}s"
ok "the audit ledger holds the status event of $name"

# gRPC: the coordinator asks the api's own port for grpc.health.v1 Check("ready").
created=$(code -X POST "$api/v1/targets" -H "authorization: Bearer $admin" -H 'content-type: application/json' \
  -d "{\"name\": \"$name-grpc\", \"instances\": [\"grpc://$instance\"], \"grpc_service\": \"ready\", \"interval_ms\": 500, \"timeout_ms\": 400}")
[ "$created" = 201 ] || fail "registering gRPC target $name-grpc answered $created, not 201"
grpc_up() { body "$api/v1/status" -H "authorization: Bearer $admin" | grep -q "\"target\":\"$name-grpc\"[^}]*\"status\":\"up\""; }
eventually grpc_up || fail "the coordinator did not report $name-grpc (gRPC health of the api) up within ${timeout}s"
ok "the coordinator probed the api over gRPC health: up"

# The token flow: a client made with the admin token, a scoped token, a call, a revocation.
made=$(body -X POST "$sts/v1/clients" -H "authorization: Bearer $admin" -H 'content-type: application/json' \
  -d "{\"client_id\": \"$client\", \"scopes\": [\"targets:read\", \"events:read\", \"metrics:read\"]}")
secret=$(sed -n 's/.*"client_secret":"\([^"]*\)".*/\1/p' <<<"$made")
[ -n "$secret" ] || fail "creating STS client $client did not return a secret: $made"
ok "created STS client $client"
issued=$(body -u "$client:$secret" -d grant_type=client_credentials -d scope=targets:read "$sts/oauth/token")
token=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' <<<"$issued")
[ -n "$token" ] || fail "the STS issued no token: $issued"
ok "got a targets:read token"
[ "$(code "$api/v1/targets/$name" -H "authorization: Bearer $token")" = 200 ] || fail "the api refused a valid targets:read token"
[ "$(code -X DELETE "$api/v1/targets/$name" -H "authorization: Bearer $token")" = 403 ] || fail "the api let a read token delete"
ok "the api accepts the token for reads (200) and refuses it for writes (403)"
[ "$(code -u "$client:$secret" -d "token=$token" "$sts/oauth/revoke")" = 200 ] || fail "revoking the token failed"
# A write, never open in any mode: the valid read token was refused it (403, above); the
# revoked one is not a credential at all (401). A read would prove nothing in dev mode, where
# reads are open to anyone.
refused() { [ "$(code -X DELETE "$api/v1/targets/$name" -H "authorization: Bearer $token")" = 401 ]; }
eventually refused || fail "the api still accepts the revoked token after ${timeout}s (a write with it is not 401)"
ok "the revoked token is refused (401 on a write)"

# Federation: the target's one instance (the api itself), merged with identity labels.
issued=$(body -u "$client:$secret" -d grant_type=client_credentials -d scope=metrics:read "$sts/oauth/token")
metrics_token=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' <<<"$issued")
[ -n "$metrics_token" ] || fail "the STS issued no metrics:read token: $issued"
federated=$(curl -s --max-time 15 -w '\n%{http_code}' -H "authorization: Bearer $metrics_token" "$gateway/v1/targets/$name/metrics")
[ "$(tail -n1 <<<"$federated")" = 200 ] || fail "federating $name through the gateway answered $(tail -n1 <<<"$federated")"
grep -q "^caracal_federation_up{target=\"$name\",instance=\"$instance\"} 1$" <<<"$federated" \
  || fail "the gateway did not federate $instance of $name (no caracal_federation_up 1)"
grep -q "^caracal_build_info{.*target=\"$name\",instance=\"$instance\"" <<<"$federated" \
  || grep -q "^caracal_build_info{.*instance=\"$instance\"" <<<"$federated" \
  || fail "the federated answer has no caracal_build_info of $instance with its identity labels"
gateway_mode=$(body "$gateway/health" | sed -n 's/.*"mode":"\([a-z]*\)".*/\1/p')
without=$(code "$gateway/v1/targets/$name/metrics")
# Open to anyone in dev mode only, as every read is.
if [ "$gateway_mode" != dev ] && [ "$without" != 401 ]; then
  fail "the gateway federates without credentials ($without in ${gateway_mode:-unknown} mode, not 401)"
fi
ok "the gateway federates $name: $instance up, its series labelled target and instance ($without without credentials, mode ${gateway_mode:-unknown})"

for service in "sts $sts" "api $api" "coordinator $coordinator" "audit $audit" "gateway $gateway" "control $control"; do
  set -- $service
  mode=$(body "$2/health" | sed -n 's/.*"mode":"\([a-z]*\)".*/\1/p')
  scrape=$(curl -s --max-time 5 -w '\n%{http_code}' -H "authorization: Bearer $bearer" "$2/metrics")
  [ "$(tail -n1 <<<"$scrape")" = 200 ] || fail "$1 /metrics with the bearer is not 200"
  grep -q '^caracal_build_info{' <<<"$scrape" || fail "$1 /metrics has no caracal_build_info"
  without=$(code "$2/metrics")
  if [ "$mode" != dev ] && [ "$without" != 401 ]; then
    fail "$1 /metrics without the bearer answered $without in $mode mode, not 401"
  fi
  ok "$1 /metrics: 200 with the bearer, $without without (mode ${mode:-unknown})"
done

echo "smoke: passed"
