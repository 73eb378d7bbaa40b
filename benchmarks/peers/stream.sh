#!/usr/bin/env bash
# Stream requests side by side, one run: a bare FastAPI+Redis floor, LitServe doing the same Redis round
# trip, LitServe serving the same MemNet checkpoint and state, and memserve. wrk -t2 -c64, 1 point per
# request to 64 sessions, D-second windows (default 15), two rounds. Run from the project's root after
# `make install` and benchmarks/peers/setup.sh. Uses Redis at 127.0.0.1:6379 dbs 13-15 (flushed).
set -u
HERE=$(cd "$(dirname "$0")" && pwd); MAIN=${MAIN:-$(pwd)}; PEER_VENV=${PEER_VENV:-/tmp/peer-venv}
export PATH=$MAIN/.venv/bin:$PATH
D=${D:-15}
WORK=$(mktemp -d); cp "$HERE"/*.lua "$WORK"/
redis-cli -n 14 flushdb >/dev/null; redis-cli -n 15 flushdb >/dev/null; redis-cli -n 13 flushdb >/dev/null
# floor
cd "$HERE"; MEMSERVE_FLOOR_REDIS=redis://127.0.0.1:6379/15 setsid $PEER_VENV/bin/uvicorn floor_app:app --port 18101 --log-level warning </dev/null >"$WORK"/floor.log 2>&1 &
FP=$!
# litserve
setsid $PEER_VENV/bin/python litserve_floor.py 18102 32 </dev/null >"$WORK"/lit.log 2>&1 &
LP=$!
MAIN=$MAIN setsid $PEER_VENV/bin/python litserve_memnet.py 18104 32 </dev/null >"$WORK"/litm.log 2>&1 &
LMP=$!
# memserve
cd "$MAIN"; MEMSERVE_REDIS_URL=redis://127.0.0.1:6379/14 MEMSERVE_DATA_DIR="$WORK"/data setsid memserve serve --host 127.0.0.1 --port 18103 </dev/null >"$WORK"/ms.log 2>&1 &
MP=$!
cd "$WORK"
for i in $(seq 1 120); do curl -fsS -XPOST localhost:18104/predict -H 'content-type: application/json' -d '{"sid":"w","values":[[0.5]]}' >/dev/null 2>&1 && break; sleep 0.5; done
for i in $(seq 1 120); do curl -fsS localhost:18103/health/ready >/dev/null 2>&1 && break; sleep 0.5; done
sleep 3
python3 - <<'PY'
import json, urllib.request
ids=[]
for i in range(64):
    req=urllib.request.Request("http://127.0.0.1:18103/v1/sessions", data=json.dumps({"kind":"memnet"}).encode(), headers={"content-type":"application/json"})
    ids.append(json.load(urllib.request.urlopen(req))["id"])
open("sids.txt","w").write("\n".join(ids)+"\n")
PY
curl -s -XPOST localhost:18102/predict -H 'content-type: application/json' -d '{"sid":"x","values":[[0.5]]}'; echo
curl -s -XPOST localhost:18101/v1/sessions/x/points -H 'content-type: application/json' -d '{"values":[[0.5]]}'; echo
# warm-up
wrk -t2 -c64 -d3s -s floor.lua http://127.0.0.1:18101 >/dev/null; wrk -t2 -c64 -d3s -s lit.lua http://127.0.0.1:18102 >/dev/null; wrk -t2 -c64 -d3s -s memserve.lua http://127.0.0.1:18103 >/dev/null; wrk -t2 -c64 -d3s -s lit.lua http://127.0.0.1:18104 >/dev/null
for round in 1 2; do
  for t in floor lit litm memserve; do
    case $t in floor) u=http://127.0.0.1:18101;; lit) u=http://127.0.0.1:18102;; litm) u=http://127.0.0.1:18104;; memserve) u=http://127.0.0.1:18103;; esac
    lua=$t.lua; [ $t = litm ] && lua=lit.lua
    out=$(wrk -t2 -c64 -d${D}s --latency -s $lua $u)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}'); p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    errs=$(echo "$out" | grep -E "Non-2xx|Socket errors" | tr '\n' ' ')
    echo "round $round $t rps=$rps p50=$p50 p99=$p99 $errs" | tee -a rounds.txt
  done
done
python3 "$HERE"/ratios.py rounds.txt memserve litm floor
for p in $FP $LP $LMP $MP; do kill -INT -- -$p 2>/dev/null; done; sleep 4
for p in $FP $LP $LMP $MP; do kill -TERM -- -$p 2>/dev/null; done; sleep 2
for p in $FP $LP $LMP $MP; do kill -KILL -- -$p 2>/dev/null; done
