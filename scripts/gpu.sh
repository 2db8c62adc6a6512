#!/usr/bin/env bash
# What a lent GPU machine runs (device tool; it has torch but no MLflow/pydantic, and $OUT comes back).
#   scripts/gpu.sh wheels                     HERE, not there: download into .whl/ the wheels `setup` installs
#                                             (pydantic and its needs, the versions of this .venv, for Python 3.12)
#   scripts/gpu.sh setup                      install carried wheels (.whl/) into /tmp/site
#   scripts/gpu.sh data                       keep the carried .devdata/ part in /tmp/dd (the next call's carry
#                                             replaces .devdata/); once all three are there, join and check them
#   scripts/gpu.sh bench resnet20 resnet32    bench each model, JSON lines into $OUT/bench.jsonl
#                                             (VARIANTS=dataloader,ours_graphed: a subset, e.g. one compiled
#                                             variant per call for ResNet-110, whose compile is minutes;
#                                             JOBS=4: also each variant as 4 runs at once on the one GPU;
#                                             GROUP=1,4,8,16: also those many runs trained together in one step;
#                                             PEER=.peer/akamaster: also the peer's own loop, row `peer`)
#   scripts/gpu.sh check [check-group args]   FIRST on a lent GPU: a group of K=4 runs vs each alone under compile and
#                                             CUDA graphs, float64 (harness check-group), log in $OUT/check.log;
#                                             exits non-zero where a member differs: then do not train with --group
#   scripts/gpu.sh run SPEC... [harness run args] train offline into /tmp/records, copied to $OUT/records
# Records come home with `python -m harness import <files>/records`.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}
cmd=$1; shift
case "$cmd" in
  wheels)
    py=${PY:-.venv/bin/python}
    for pkg in pydantic pydantic_core annotated-types typing-inspection; do
      v=$($py -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg") || exit 2
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$pkg==$v" || exit 2
    done
    ls .whl
    ;;
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    python3 -c "import torch, torchvision, pydantic; print('torch', torch.__version__, 'tv', torchvision.__version__, 'pydantic', pydantic.__version__, torch.cuda.get_device_name())"
    ;;
  data)
    mkdir -p /tmp/dd && cp .devdata/* /tmp/dd/
    if [ -f /tmp/dd/part-00 ] && [ -f /tmp/dd/part-01 ] && [ -f /tmp/dd/part-02 ]; then
      (cd /tmp/dd && cat part-0? > cifar10-full.npz && sha256sum -c SHA256SUMS && rm part-0?) || exit 2
    fi
    ls -la /tmp/dd
    ;;
  bench)
    for m in "$@"; do
      timeout "${BENCH_TIMEOUT:-280}" python3 -m harness bench --model "$m" --compile --iters "${ITERS:-200}" \
        --warmup "${WARMUP:-20}" --workers "${WORKERS:-8}" ${VARIANTS:+--variants "$VARIANTS"} \
        ${JOBS:+--jobs "$JOBS"} ${GROUP:+--group "$GROUP"} ${PEER:+--peer "$PEER"} --json \
        >> "$OUT/bench.jsonl" 2>> "$OUT/bench.log" \
        || echo "bench $m: exit $?" | tee -a "$OUT/bench.log"
      tail -n 1 "$OUT/bench.jsonl"
    done
    ;;
  check)
    data=${DATA:-/tmp/dd/cifar10-full.npz}
    [ -f "$data" ] || data=../shared/data/cifar10-mini.npz
    timeout "${CHECK_TIMEOUT:-420}" python3 -m harness check-group --data "$data" "$@" 2>&1 | tee -a "$OUT/check.log"
    exit "${PIPESTATUS[0]}"
    ;;
  run)
    records=${RECORDS:-/tmp/records}  # not under $OUT (empty at each call): the next call resumes what this one cut off
    timeout "${RUN_TIMEOUT:-560}" python3 -m harness run --offline "$records" --no-progress "$@" 2>&1 \
      | tee -a "$OUT/run.log" | grep -v "^\s*$" | tail -n 40
    rc=${PIPESTATUS[0]}  # the run's own exit status (124: the call's time limit cut it off), after the copy below
    mkdir -p "$OUT/records" && cp -r "$records"/. "$OUT/records/" 2>/dev/null
    find "$OUT" -type f | head -20
    exit "$rc"
    ;;
  *) echo "gpu.sh: unknown command $cmd (wheels, setup, data, check, bench, run)" >&2; exit 2 ;;
esac
