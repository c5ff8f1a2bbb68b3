#!/bin/bash
# Agent RSS under a zip bomb and a huge log, with the real binary (TLS default):
# `cargo build --release && scripts/rss-bounds.sh` (figures in BENCHMARKS.md).
set -u
T=${TEND:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tend}
D=$(mktemp -d); cd $D
PORT=47190
setsid $T server --listen 127.0.0.1:$PORT --data-dir $D/server > server.log 2>&1 &
SP=$!
for i in $(seq 100); do [ -f server/ca.pem ] && curl -s --cacert server/ca.pem https://127.0.0.1:$PORT/v1/health | grep -q leader && break; sleep 0.1; done
export TEND_ADDR=https://127.0.0.1:$PORT TEND_TOKEN=$(cat server/token) TEND_CA_CERT=$D/server/ca.pem
JT=$($T agent token create --ttl-seconds 600)
setsid $T agent run --server $TEND_ADDR --join-token $JT --id a1 --ports 47200-47299 --data-dir $D/agent > agent.log 2>&1 &
AP=$!
sleep 2
rss() { awk '/VmRSS/{print int($2/1024)}' /proc/$1/status; }
echo "agent RSS at rest: $(rss $AP) MB"
python3 - <<'PY'
import zipfile
with zipfile.ZipFile("bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
    with z.open("zero.bin", "w", force_zip64=True) as f:
        block = b"\0" * (1 << 20)
        for _ in range(1024):
            f.write(block)
PY
ls -la bomb.zip
cat > bomb.yml <<Y
version: 1
name: bomb
pods:
  w:
    artifacts: [ { uri: ./bomb.zip, extract: true } ]
    tasks: { t: { cmd: 'exec sleep 600' } }
Y
$T service deploy bomb.yml --no-wait > /dev/null
peak=0; for i in $(seq 300); do r=$(rss $AP); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.02; done
echo "agent RSS peak during the 1 GiB zip bomb: $peak MB"
$T events --service bomb | grep -i "failed" | head -2 | cut -c1-400
cat > log.yml <<Y
version: 1
name: logs
pods:
  w:
    tasks: { t: { cmd: "head -c 1500000000 /dev/zero | tr '\\\\0' x; exec sleep 600" } }
Y
$T service deploy log.yml --no-wait > /dev/null
sleep 25
ls -la $D/agent/sandboxes/logs*/*/ 2>/dev/null | head; find $D/agent -name 't.stdout*' -exec ls -la {} \; | head
peak=0; ( for i in 1 2 3 4 5; do $T task logs w-0 t --service logs --tail-bytes 100 > /dev/null; done ) & LP=$!
while kill -0 $LP 2>/dev/null; do r=$(rss $AP); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.01; done
echo "agent RSS peak while serving 5 log tails: $peak MB"
$T task logs w-0 t --service logs --tail-bytes 100 | head -c 200; echo
kill -TERM $AP; sleep 2; kill -9 $AP $SP 2>/dev/null; rm -rf "$D"; true
