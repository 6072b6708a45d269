#!/usr/bin/env bash
# Runs every GPU test on the GPU machine in four parallel pytest shards (compiles are CPU-bound; the
# tests are small), then the compute-sanitizer grid. Usage, from the repository root on that machine:
#   bash benchmarks/gpu_tests.sh "$OUT"        (reports: $OUT/gpu_<shard>.txt, $OUT/sanitize.txt)
set -u
out=${1:?output folder}
mkdir -p "$out"
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
shard() {
    local name=$1; shift
    # SIGINT at the limit: pytest stops as on Ctrl-C and still prints the failures it has seen so far
    timeout -s INT -k 20 "${SHARD_S:-390}" python -m pytest -m gpu -p no:cacheprovider --timeout 150 -q -rfE \
        --tb=short "$@" > "$out/gpu_$name.txt" 2>&1
    echo "$name rc=$?" >> "$out/rc.txt"
}
shard hopper_bwd tests/codegen/test_gpu_hopper_bwd.py &
shard hopper_misc tests/codegen/test_gpu_hopper.py tests/codegen/test_gpu_faults.py tests/bitlower tests/passes \
    tests/codegen/test_hopper_plan.py --deselect tests/bitlower/test_testing_scores.py &
# the GPU property alone (30 Inductor compiles; did not fit beside the others in 480 s, session 10)
shard scores tests/bitlower/test_testing_scores.py --timeout "${SHARD_S:-390}" &
shard tldot tests/codegen/test_gpu.py &
shard runtime tests/runtime &
wait
cat "$out/rc.txt"
for f in "$out"/gpu_*.txt; do echo "== $f"; tail -n 15 "$f"; done
if [ "${SANITIZE_S:-170}" -gt 0 ]; then
    timeout "${SANITIZE_S:-170}" python benchmarks/kernel_sanitize.py --out "$out/san" --jobs 12 > "$out/sanitize.txt" 2>&1
    echo "sanitize rc=$?"; tail -n 60 "$out/sanitize.txt"
fi
