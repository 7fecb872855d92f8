#!/usr/bin/env bash
# Every GPU measurement BENCHMARKS.md records, in one command for a lent GPU machine.
#
#   bash scripts/bench_gpu.sh OUT_DIR [PART ...]
#
# PARTs (default: tests rollout maml reptile main): tests (the CUDA-marked tests), rollout,
# maml, reptile (speed modes), main (train_metarl.py --device cuda, a short run), rl2-speed
# (a short RL² run per setting: seconds per meta-iteration), rl2-k5n10, rl2-k10n100 and rl2-k5n100
# (learning runs scored on the usual 1,000 held-out tasks; the scoring of a 100-pull setting takes
# minutes, so run one such part per 10-minute device call). Each part logs to OUT_DIR/PART.log
# and writes its JSON there; a part that fails or overruns its time limit is reported and the
# next one runs. Set METARL_GPU_DEVICE to measure another device (default cuda).
set -u
out=${1:?usage: bash scripts/bench_gpu.sh OUT_DIR [PART ...]}
shift
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests rollout maml reptile main)
device=${METARL_GPU_DEVICE:-cuda}
known=" tests rollout maml reptile main rl2-speed rl2-k5n10 rl2-k10n100 rl2-k5n100 "
for p in "${parts[@]}"; do  # all checked before anything runs: device time is scarce
    [[ $known == *" $p "* ]] || { echo "unknown part: $p (choose from:$known)" >&2; exit 2; }
done
mkdir -p "$out"
export PYTHONUNBUFFERED=1

part() {  # part NAME TIMEOUT_S COMMAND...: run, log, report its status and time
    local name=$1 limit=$2 began=$SECONDS rc
    shift 2
    echo "=== $name: $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    tail -n 25 "$out/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - began)) s"
    echo "$name $rc $((SECONDS - began))" >>"$out/status.txt"
}

for p in "${parts[@]}"; do
    case $p in
    tests) part tests 240 python -m pytest tests -m cuda -q -p no:cacheprovider ;;
    rollout)
        part rollout 150 python scripts/bench_rollout.py --device "$device" --num-envs 4096 16384 65536 262144 \
            --no-compile --skip-sync --json-out "$out/rollout.json"
        part rollout-compiled 240 python scripts/bench_rollout.py --device "$device" --num-envs 65536 \
            --compile --skip-sync --json-out "$out/rollout-compiled.json"
        ;;
    maml)
        part maml 150 python scripts/bench_maml.py --mode speed --device "$device" --meta-batch-sizes 20 40 \
            --inner-loops batched looped --json-out "$out/maml.json"
        ;;
    reptile) part reptile 180 python scripts/bench_reptile.py --mode speed --device "$device" --out "$out/reptile" ;;
    main)
        part main 180 python scripts/train_metarl.py --device "$device" --iterations 20 --no-progress \
            --run-dir "$out/main-run" --comet offline
        ;;
    rl2-speed)
        part rl2-speed 300 python scripts/bench_rl2.py --device "$device" --minutes 0.5 --num-tasks 100 \
            --settings bandit-k5-n10 bandit-k10-n100 bandit-k5-n100 mdp-10x5 --json-out "$out/rl2-speed.json"
        ;;
    rl2-k5n10)
        part rl2-k5n10 300 python scripts/bench_rl2.py --device "$device" --minutes 2 --settings bandit-k5-n10 \
            --json-out "$out/rl2-k5n10.json"
        ;;
    rl2-k10n100)
        part rl2-k10n100 560 python scripts/bench_rl2.py --device "$device" --minutes 5 --settings bandit-k10-n100 \
            --json-out "$out/rl2-k10n100.json"
        ;;
    rl2-k5n100)
        part rl2-k5n100 560 python scripts/bench_rl2.py --device "$device" --minutes 5 --settings bandit-k5-n100 \
            --anneal-lr --json-out "$out/rl2-k5n100.json"
        ;;
    esac
done
cat "$out/status.txt"
