#!/bin/sh
# The pack and stage commands without mpirun: pack a tree, stage (a plain copy),
# append, and check that bad input fails with a message naming the file.
# usage: cli_local.sh HPDL_STORE_CLI
set -eu
CLI=$1
T=$(mktemp -d /tmp/hpdl_cli_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "cli_local.sh: FAIL: $*" >&2; exit 1; }
mkdir -p "$T/src/x/y" "$T/more"
echo hello > "$T/src/x/y/h.txt"
: > "$T/src/empty"
echo more > "$T/more/m.txt"
"$CLI" pack "$T/src" -o "$T/store" --compression lz4 -q
"$CLI" pack "$T/src" -o "$T/store2" --compression lz4 -q
cmp "$T/store/index.hpdi" "$T/store2/index.hpdi" || fail "packing is not deterministic"
cmp "$T/store/part-00000.hpdp" "$T/store2/part-00000.hpdp" || fail "packing is not deterministic"
if "$CLI" pack "$T/more" -o "$T/store" -q 2>"$T/err"; then fail "pack into an existing store without --append"; fi
grep -q -- "--append" "$T/err" || fail "no --append hint: $(cat "$T/err")"
"$CLI" pack "$T/more" -o "$T/store" --append -q
[ -f "$T/store/part-00001.hpdp" ] || fail "append wrote no new partition"
"$CLI" stage "$T/store" --to "$T/local" -q
cmp "$T/store/index.hpdi" "$T/local/index.hpdi" || fail "staged index differs"
cmp "$T/store/part-00001.hpdp" "$T/local/part-00001.hpdp" || fail "staged partition differs"
# A truncated partition is refused by stage, naming the file.
head -c 66 "$T/store/part-00000.hpdp" > "$T/cut" && mv "$T/cut" "$T/store/part-00000.hpdp"
if "$CLI" stage "$T/store" --to "$T/local2" 2>"$T/err"; then fail "stage accepted a truncated partition"; fi
grep -q "part-00000.hpdp" "$T/err" || fail "error does not name the partition: $(cat "$T/err")"
[ ! -f "$T/local2/index.hpdi" ] || fail "a failed stage left an index behind"
echo "cli_local.sh: OK"
