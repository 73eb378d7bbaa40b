#!/usr/bin/env bash
# VMA classify side by side, one run: a LitServe peer (litserve_vma.py: the same checkpoint, exemplar
# embeddings cached in Redis, no bound) and memserve with samples 0 and 1; 16 sessions of 8 ways x 4
# shots, one 28x28 query per request, wrk -t2 -cC (default 16), D-second windows, two rounds. Run from
# the project's root after `make install` and benchmarks/peers/setup.sh; DATA (or MEMSERVE_DATA_DIR)
# names the folder holding omniglot/.
# Uses Redis at 127.0.0.1:6379 dbs 12 and 14 (flushed).
set -u
HERE=$(cd "$(dirname "$0")" && pwd); MAIN=${MAIN:-$(pwd)}; PEER_VENV=${PEER_VENV:-/tmp/peer-venv}
DATA=${DATA:-${MEMSERVE_DATA_DIR:?set DATA or MEMSERVE_DATA_DIR to the folder holding omniglot/}}
export PATH=$MAIN/.venv/bin:$PATH; D=${D:-15}; C=${C:-16}
WORK=$(mktemp -d)
redis-cli -n 12 flushdb >/dev/null; redis-cli -n 14 flushdb >/dev/null
cd "$HERE"; MAIN=$MAIN DATA=$DATA setsid $PEER_VENV/bin/python litserve_vma.py 18105 32 </dev/null >"$WORK"/litv.log 2>&1 &
LP=$!
cd "$MAIN"; MEMSERVE_REDIS_URL=redis://127.0.0.1:6379/14 MEMSERVE_DATA_DIR="$WORK"/data setsid memserve serve --host 127.0.0.1 --port 18106 </dev/null >"$WORK"/msv.log 2>&1 &
MP=$!
cd "$WORK"
for i in $(seq 1 120); do curl -fsS localhost:18106/health/ready >/dev/null 2>&1 && break; sleep 0.5; done
python3 - "$DATA" <<'PY'
import json, sys, urllib.request
import numpy as np
ev = np.load(sys.argv[1] + "/omniglot/images_evaluation_28x28.npz"); keys = sorted(ev.keys()); rng = np.random.default_rng(0)
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:18106" + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))
sids = []
for s in range(16):
    picked = rng.choice(len(keys), 8, replace=False)
    sid = post("/v1/sessions", {"kind": "vma"})["id"]; ex = []
    for c, k in enumerate(picked):
        for j in range(4):
            ex.append({"pixels": ((255 - ev[keys[k]].reshape(20, 28, 28)[j]) / 255.0).round().tolist(), "label": f"c{c}"})
    post(f"/v1/sessions/{sid}/exemplars", {"exemplars": ex}); sids.append(sid)
q = ((255 - ev[keys[0]].reshape(20, 28, 28)[10]) / 255.0).round().astype(int).tolist()
open("vsids.txt", "w").write("\n".join(sids) + "\n")
open("query.json", "w").write(json.dumps(q))
PY
Q=$(cat query.json)
cat > tmp-msv.lua <<LUA
local sids = {}
for line in io.lines("vsids.txt") do sids[#sids + 1] = line end
local i = 0
wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"
request = function() i = i + 1
  return wrk.format(nil, "/v1/sessions/" .. sids[(i % #sids) + 1] .. "/classify", nil, '{"images": [{"pixels": $Q}], "samples": SAMPLES}') end
LUA
sed 's/SAMPLES/0/' tmp-msv.lua > tmp-msv0.lua; sed 's/SAMPLES/1/' tmp-msv.lua > tmp-msv1.lua
cat > tmp-litv.lua <<LUA
local i = 0
wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"
request = function() i = i + 1
  return wrk.format(nil, "/predict", nil, '{"sid": "' .. (i % 16) .. '", "pixels": $Q}') end
LUA
for i in $(seq 1 240); do curl -fsS -XPOST localhost:18105/predict -H "content-type: application/json" -d "{\"sid\":\"0\",\"pixels\":$Q}" >/dev/null 2>&1 && break; sleep 0.5; done
curl -s -XPOST localhost:18105/predict -H "content-type: application/json" -d "{\"sid\":\"0\",\"pixels\":$Q}" | cut -c1-120; echo
wrk -t2 -c$C -d3s -s tmp-litv.lua http://127.0.0.1:18105 >/dev/null; wrk -t2 -c$C -d3s -s tmp-msv0.lua http://127.0.0.1:18106 >/dev/null
for round in 1 2; do
  for t in litv msv0 msv1; do
    case $t in litv) u=http://127.0.0.1:18105;; *) u=http://127.0.0.1:18106;; esac
    out=$(wrk -t2 -c$C -d${D}s --latency -s tmp-$t.lua $u)
    echo "round $round $t rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}') p50=$(echo "$out" | awk '$1=="50%" {print $2}') p99=$(echo "$out" | awk '$1=="99%" {print $2}') $(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr '\n' ' ')" | tee -a rounds.txt
  done
done
python3 "$HERE"/ratios.py rounds.txt msv0 litv && python3 "$HERE"/ratios.py rounds.txt msv1 litv
for p in $LP $MP; do kill -INT -- -$p 2>/dev/null; done; sleep 4
for p in $LP $MP; do kill -TERM -- -$p 2>/dev/null; done; sleep 2
for p in $LP $MP; do kill -KILL -- -$p 2>/dev/null; done
