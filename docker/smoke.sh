#!/usr/bin/env bash
# `make docker-smoke`: build the images on a local Debian base, start docker-compose.cpu.yml
# (Redis, the API, one CPU worker), wait for /health/ready and for every container's own
# health check, run tests/e2e/test_docker_compose.py against it, and take it down again, on
# failure too (after printing the containers' logs).
#
#   docker/smoke.sh            as above
#   docker/smoke.sh --keep     leave the stack running (it prints how to reach and stop it)
#
# Needs: a Docker daemon, a docker client that builds with BuildKit (`--secret`), docker
# compose v2 or docker-compose v1, debootstrap (docker/build-base.sh), the project's .venv
# (`make install`), and pip access to PyPI and to the CPU torch wheel (torch==2.13.0+cpu:
# pip's configured find-links or indexes on this host).
#
# Settings from the environment:
#   DOCKER            the docker client (default: the first on PATH that has `build --secret`)
#   CA_BUNDLE         the CA bundle the builds' pip trusts (default /etc/ssl/certs/ca-certificates.crt)
#   IMAGE_INDEX_URL   the index the images' pip installs from (default https://pypi.org/simple)
#   SMOKE_PROJECT     the compose project name (default memserve-smoke)
set -euo pipefail
cd "$(dirname "$0")/.."

KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1

PY=${PY:-.venv/bin/python}
PROJECT=${SMOKE_PROJECT:-memserve-smoke}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
IMAGE_INDEX_URL=${IMAGE_INDEX_URL:-https://pypi.org/simple}
BASE_IMAGE=memserve-base:bookworm
WHEELS_IMAGE=memserve-wheels:local
API_IMAGE=memserve-api:0.1.0-local
WORKER_IMAGE=memserve-worker:0.1.0-cpu
REDIS_IMAGE=memserve-redis:7.0.15-bookworm
TORCH_PIN='torch==2.13.0+cpu'

log() { printf '\n== smoke: %s\n' "$*"; }

# Docker 23+ clients build with BuildKit only through the buildx plugin; an older client
# (Debian's docker.io 20.10) has BuildKit built in. Either takes --secret; a client without
# either would fall back to the legacy builder, which has no secrets.
pick_docker() {
  local d
  for d in ${DOCKER:-} $(type -ap docker); do
    if DOCKER_BUILDKIT=1 "$d" build --help 2>/dev/null | grep -q -- '--secret'; then
      echo "$d"
      return 0
    fi
  done
  echo "smoke: no docker client builds with BuildKit (--secret): install the buildx plugin" >&2
  return 1
}
DOCKER=$(pick_docker)
export DOCKER DOCKER_BUILDKIT=1
if "$DOCKER" compose version >/dev/null 2>&1; then
  COMPOSE=("$DOCKER" compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  echo "smoke: neither docker compose nor docker-compose found" >&2
  exit 1
fi
COMPOSE_NAME=${COMPOSE[*]}
COMPOSE+=(-p "$PROJECT" -f docker-compose.cpu.yml)
[[ -x "$PY" ]] || { echo "smoke: $PY not found: run make install" >&2; exit 1; }
[[ -r "$CA_BUNDLE" ]] || { echo "smoke: CA bundle $CA_BUNDLE not readable" >&2; exit 1; }

work=$(mktemp -d /tmp/memserve-smoke.XXXXXX)
started=0
cleanup() {
  local rc=$?
  if [[ -n "$build_log" && -f "$build_log" ]]; then
    log "build failed: the end of $(basename "$build_log")"
    tail -40 "$build_log"
  fi
  if ((started)); then
    if ((rc != 0)); then
      log "failed (exit $rc): the containers' logs"
      "${COMPOSE[@]}" ps || true
      "${COMPOSE[@]}" logs --no-color --tail 80 || true
    fi
    if ((KEEP && rc == 0)); then
      log "left running at $url; API key: line 1 of $work/key.txt"
      echo "  stop: MEMSERVE_KEYS_FILE=$work/api_keys.json ${COMPOSE[*]} down -v; rm -r $work"
      return
    fi
    log "down"
    "${COMPOSE[@]}" down -v --remove-orphans || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Called as plain commands, never in an `||` or `if`: bash would switch off set -e inside.
declare -A SECONDS_TAKEN
timed() {  # timed NAME COMMAND...: run it, remember how long it took
  local name=$1 t0
  shift
  t0=$(date +%s)
  "$@"
  SECONDS_TAKEN[$name]=$(($(date +%s) - t0))
}
build_log=""
build() {  # build NAME DOCKERFILE IMAGE ARGS...: BuildKit's plain log to a file, shown on failure
  build_log=$work/$1-build.log
  "$DOCKER" build --progress=plain -f "$2" -t "$3" "${@:4}" . >"$build_log" 2>&1
  build_log=""
}

log "docker: $DOCKER ($("$DOCKER" version --format '{{.Client.Version}} client, {{.Server.Version}} daemon')), compose: $COMPOSE_NAME"

log "base image $BASE_IMAGE"
timed base docker/build-base.sh "$BASE_IMAGE"

# The CPU torch wheel, fetched by the host's pip (its find-links or indexes: on this host a
# local wheel directory) and handed to the builds as an image mounted at /wheels, with a
# constraint that makes pip take it: `torch==2.13.0` alone would also match PyPI's CUDA build,
# GBs the CPU images do not want.
log "wheels image $WHEELS_IMAGE"
build_wheels() {
  mkdir -p "$work/wheels"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --abi cp311 --platform manylinux_2_28_x86_64 -d "$work/wheels" "$TORCH_PIN"
  echo "$TORCH_PIN" > "$work/wheels/constraints.txt"
  printf 'FROM scratch\nCOPY *.whl constraints.txt /\n' > "$work/wheels.Dockerfile"
  "$DOCKER" build -q -f "$work/wheels.Dockerfile" -t "$WHEELS_IMAGE" "$work/wheels" >/dev/null
}
timed wheels build_wheels

# PIP_CERT: pip inside the build trusts the host's CA bundle, mounted as a secret (never in a
# layer); PyPI over the network for everything but torch.
BUILD_ARGS=(
  --build-arg "BASE_IMAGE=$BASE_IMAGE"
  --build-arg "WHEELS_IMAGE=$WHEELS_IMAGE"
  --build-arg "PIP_FIND_LINKS=/wheels"
  --build-arg "PIP_CONSTRAINT=/wheels/constraints.txt"
  --build-arg "PIP_CERT=/run/secrets/ca_bundle"
  --build-arg "PIP_INDEX_URL=$IMAGE_INDEX_URL"
  --secret "id=ca_bundle,src=$CA_BUNDLE"
)
log "api image $API_IMAGE"
timed api build api docker/api.Dockerfile "$API_IMAGE" "${BUILD_ARGS[@]}" \
  --build-arg "TORCH_INDEX_URL=$IMAGE_INDEX_URL"
log "worker image $WORKER_IMAGE"
timed worker build worker docker/worker.Dockerfile "$WORKER_IMAGE" "${BUILD_ARGS[@]}" --build-arg DEVICE=cpu
log "redis image $REDIS_IMAGE"
timed redis build redis docker/redis.Dockerfile "$REDIS_IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE"

# An API key of the smoke run's own: the key stays in $work (0600); the API gets only its
# hash, in a file it can read as uid 10001.
"$DOCKER" run --rm "$API_IMAGE" memserve keys new smoke 2>/dev/null > "$work/key.txt"
chmod 600 "$work/key.txt"
echo "[$(sed -n 2p "$work/key.txt")]" > "$work/api_keys.json"
chmod 644 "$work/api_keys.json"

port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export MEMSERVE_PORT_HOST=$port MEMSERVE_KEYS_FILE=$work/api_keys.json
url=http://127.0.0.1:$port

log "up ($url)"
started=1
t0=$(date +%s)
"${COMPOSE[@]}" up -d
deadline=$((t0 + 300))
until curl -fsS -o /dev/null "$url/health/ready" 2>/dev/null; do
  if (($(date +%s) > deadline)); then echo "smoke: $url/health/ready not 200 after 300 s" >&2; exit 1; fi
  sleep 2
done
SECONDS_TAKEN[ready]=$(($(date +%s) - t0))
curl -fsS "$url/health/ready"
echo

# The images' own HEALTHCHECKs (the commands an orchestrator would use) must pass too.
for svc in redis api worker; do
  cid=$("${COMPOSE[@]}" ps -q "$svc")
  until [[ "$("$DOCKER" inspect --format '{{.State.Health.Status}}' "$cid")" == healthy ]]; do
    if (($(date +%s) > deadline)); then echo "smoke: $svc not healthy after 300 s" >&2; exit 1; fi
    sleep 3
  done
done
SECONDS_TAKEN[healthy]=$(($(date +%s) - t0))
"${COMPOSE[@]}" ps

log "tests/e2e/test_docker_compose.py"
t0=$(date +%s)
MEMSERVE_DOCKER_URL=$url MEMSERVE_DOCKER_API_KEY=$(sed -n 1p "$work/key.txt") \
  "$PY" -m pytest -p no:cacheprovider -m docker -v tests/e2e/test_docker_compose.py
SECONDS_TAKEN[test]=$(($(date +%s) - t0))

log "passed"
for image in "$BASE_IMAGE" "$WHEELS_IMAGE" "$API_IMAGE" "$WORKER_IMAGE" "$REDIS_IMAGE"; do
  printf '  %-32s %s\n' "$image" \
    "$("$DOCKER" image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
done
for step in base wheels api worker redis ready healthy test; do
  printf '  %-8s %4s s\n' "$step" "${SECONDS_TAKEN[$step]}"
done
