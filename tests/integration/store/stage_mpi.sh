#!/bin/sh
# Staging under `mpirun -np 2`, each rank acting as its own node (HPDL_NODE_ID), into
# two separate node-local folders: full replication gives both nodes every partition;
# partitioned mode with 1 replica splits them; with 2 replicas both hold all.
# Every staged folder must read back byte-identical to the source (checked with a
# second pack-free comparison: the staged index equals the original, partitions too).
# usage: stage_mpi.sh HPDL_STORE_CLI [MPIRUN]
set -eu
CLI=$1
MPIRUN=${2:-mpirun}
T=$(mktemp -d /tmp/hpdl_stage_XXXXXX)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/src/a/b" "$T/src/c"
i=0
while [ $i -lt 40 ]; do
  head -c $((i * 997)) /dev/urandom > "$T/src/a/b/f$i.bin"
  echo "file $i" > "$T/src/c/t$i.txt"
  i=$((i + 1))
done
"$CLI" pack "$T/src" -o "$T/shared" --partitions 5 -q
ROOT=""
[ "$(id -u)" = 0 ] && ROOT="--allow-run-as-root"
# Each rank sets HPDL_NODE_ID from its world rank, so rank r is "node r".
run() {
  "$MPIRUN" $ROOT --oversubscribe -np 2 sh -c 'HPDL_NODE_ID=$OMPI_COMM_WORLD_RANK exec "$0" "$@"' "$CLI" stage "$@"
}
fail() { echo "stage_mpi.sh: FAIL: $*" >&2; exit 1; }

run "$T/shared" --to "$T/full/node%n"
for n in 0 1; do
  cmp "$T/shared/index.hpdi" "$T/full/node$n/index.hpdi" || fail "full: index differs on node $n"
  for p in "$T"/shared/part-*.hpdp; do
    cmp "$p" "$T/full/node$n/$(basename "$p")" || fail "full: $(basename "$p") differs on node $n"
  done
done

run "$T/shared" --to "$T/part/node%n" --mode partitioned --replicas 1
n0=$(ls "$T/part/node0" | grep -c hpdp)
n1=$(ls "$T/part/node1" | grep -c hpdp)
[ "$n0" -eq 3 ] && [ "$n1" -eq 2 ] || fail "partitioned r=1: node0 has $n0, node1 has $n1 partitions (want 3 and 2)"
[ -f "$T/part/node0/part-00000.hpdp" ] && [ -f "$T/part/node1/part-00001.hpdp" ] || fail "partitioned r=1: wrong placement"
for p in "$T"/part/node*/part-*.hpdp; do
  cmp "$p" "$T/shared/$(basename "$p")" || fail "partitioned: $p differs"
done

run "$T/shared" --to "$T/rep/node%n" --mode partitioned --replicas 2
for n in 0 1; do
  [ "$(ls "$T/rep/node$n" | grep -c hpdp)" -eq 5 ] || fail "replicas=2: node $n lacks partitions"
done

# Ranks that share a node share one copy: two ranks as one node write one folder.
"$MPIRUN" $ROOT --oversubscribe -np 2 sh -c 'HPDL_NODE_ID=7 exec "$0" "$@"' "$CLI" stage "$T/shared" --to "$T/one/node%n" -q
[ -d "$T/one/node0" ] && [ ! -d "$T/one/node1" ] || fail "two ranks on one node made two copies"
cmp "$T/shared/index.hpdi" "$T/one/node0/index.hpdi" || fail "shared node: index differs"

# A bad HPDL_NODE_ID is refused by name (it used to mean node 0).
if "$MPIRUN" $ROOT --oversubscribe -np 2 sh -c 'HPDL_NODE_ID=node-a exec "$0" "$@"' "$CLI" stage "$T/shared" \
     --to "$T/bad/node%n" -q >"$T/bad.log" 2>&1; then
  fail "HPDL_NODE_ID=node-a was accepted"
fi
grep -q "HPDL_NODE_ID='node-a' is not a node number" "$T/bad.log" || fail "unclear error: $(tail -3 "$T/bad.log")"

echo "stage_mpi.sh: OK"
