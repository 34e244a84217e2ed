#!/usr/bin/env bash
# GPU check: the CUDA-vs-CPU tests (tests/test_gpu.py, marker `gpu`), then bench/bench_kronos.py and
# bench/bench_inference.py on cuda. Each step prints one JSON line (also appended to $OUT/gpu_check.jsonl
# when $OUT is set, with the whole log in $OUT/gpu_check.log); the last line is a one-line summary.
# Exit status 0 only when every step passed. Under 8 minutes on an H200: each step has its own timeout
# (45 + 200 + 110 + 110 s, plus 10 s each to kill a hung one), a normal run should take a few minutes.
#
# How a later session runs it through the device tool. The GPU machine gets only the checkout (../shared
# does not travel) and reaches no package registry, so two things are prepared HERE first, into the
# git-ignored folder .gpu-data/ (about 3.5 MB):
#
#   1. here, once:     bench/gpu_check.sh --prepare
#        .gpu-data/data/binanceus/BTC_USDT-1m.csv  the first 12,000 bars of ../shared/data's file (or of
#                                                  $MOE_SHARED_DATA's): enough for the tests (3,000 bars),
#                                                  bench_kronos (bars 10,000-10,480) and bench_inference
#        .gpu-data/wheels/*.whl                    what the machine's image lacks: pydantic, pydantic-core,
#                                                  annotated-types, typing-inspection, typing-extensions,
#                                                  at this .venv's versions, for CPython 3.12 x86-64
#   2. device tool:    run(command="bash bench/gpu_check.sh", carry=[".gpu-data"], timeout_s=540)
#        read the summary in output_tail; $OUT/gpu_check.jsonl and gpu_check.log come back as files.
#
# On the machine the image's python3 (with its CUDA torch, numpy, pandas, numba, pytest) runs everything;
# the carried wheels are installed into an overlay directory put first on PYTHONPATH (refreshed when the
# wheels change). Not a `python -m venv`: a venv made from that python3 (itself a venv) would not see the
# image's torch, and nothing can be installed there from a registry.
#
# Environment: MOE_SHARED_DATA (data root; default .gpu-data/data when it exists, else ../shared/data),
# GPU_CHECK_PYTHON (default python3), GPU_CHECK_DEVICE (default cuda; `cpu` is a dry run of the script
# on a machine without a GPU: the tests then skip and the benchmarks run on the CPU),
# GPU_CHECK_SITE (overlay directory, default /tmp/moe-gpu-site); for --prepare: GPU_CHECK_PREP_PYTHON (a
# python with pip, default .venv/bin/python) and GPU_CHECK_BOX_PY (the machine's Python, default 3.12).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
GPU_DATA="$ROOT/.gpu-data"
BARS=12000
WHEELS=(pydantic pydantic-core annotated-types typing-inspection typing-extensions)

prepare() {
    local src="${MOE_SHARED_DATA:-$ROOT/../shared/data}/binanceus/BTC_USDT-1m.csv"
    local py="${GPU_CHECK_PREP_PYTHON:-$ROOT/.venv/bin/python}" box_py="${GPU_CHECK_BOX_PY:-3.12}"
    [ -f "$src" ] || { echo "gpu_check --prepare: no $src (set MOE_SHARED_DATA)"; return 1; }
    rm -rf "$GPU_DATA" && mkdir -p "$GPU_DATA/data/binanceus" "$GPU_DATA/wheels" || return 1
    head -n $((BARS + 1)) "$src" >"$GPU_DATA/data/binanceus/BTC_USDT-1m.csv" || return 1
    # pin the versions this checkout is tested with
    local specs
    specs=$("$py" -c 'import importlib.metadata as m, sys
print(" ".join(f"{p}=={m.version(p)}" for p in sys.argv[1:]))' "${WHEELS[@]}") || return 1
    # shellcheck disable=SC2086
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$box_py" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$GPU_DATA/wheels" $specs || return 1
    echo "gpu_check --prepare: $(du -sh "$GPU_DATA" | cut -f1) in .gpu-data/ ($specs); now run, through the" \
        "device tool: bash bench/gpu_check.sh with carry [\".gpu-data\"]"
}

if [ "${1:-}" = "--prepare" ]; then
    prepare
    exit $?
fi

PY="${GPU_CHECK_PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SITE="${GPU_CHECK_SITE:-/tmp/moe-gpu-site}"
WORK="$(mktemp -d)"
JSONL="$WORK/gpu_check.jsonl"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -z "${MOE_SHARED_DATA:-}" ] && [ -d "$GPU_DATA/data" ]; then
    export MOE_SHARED_DATA="$GPU_DATA/data"
fi
if [ -n "${OUT:-}" ] && [ -z "${GPU_CHECK_TEED:-}" ]; then  # the whole log also to $OUT/gpu_check.log
    mkdir -p "$OUT"
    GPU_CHECK_TEED=1 bash "${BASH_SOURCE[0]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
T0=$SECONDS

emit() {  # one JSON line: to stdout and to the jsonl
    echo "$1" | tee -a "$JSONL"
}

fail_line() {  # step, rc, seconds, log file -> a JSON line naming the failure
    "$PY" - "$1" "$2" "$3" "$4" <<'EOF'
import json, sys
step, rc, secs, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    tail = open(log, errors="replace").read()[-600:]
except OSError:
    tail = ""
why = "timed out" if rc in (124, 137) else f"exit status {rc}" if rc else "its last stdout line is not JSON"
print(json.dumps({"step": step, "ok": False, "rc": rc, "seconds": secs, "error": why, "log_tail": tail}))
EOF
}

# ---- 1. python environment: the image's python3 plus the carried wheels it lacks
if ! "$PY" -c 'import pydantic, yaml' 2>/dev/null; then
    shopt -s nullglob
    whl=("$GPU_DATA"/wheels/*.whl)
    shopt -u nullglob
    if [ ${#whl[@]} -eq 0 ]; then
        echo "gpu_check: $PY lacks pydantic and .gpu-data/wheels is empty:" \
            "run bench/gpu_check.sh --prepare here and carry .gpu-data"
        exit 1
    fi
    stamp="$(ls "$GPU_DATA/wheels" | sort | tr '\n' ' ')"
    if [ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$stamp" ]; then  # refresh when the wheel set changed
        rm -rf "$SITE" && mkdir -p "$SITE"
        if "$PY" -m pip --version >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --target "$SITE" "${whl[@]}" || exit 1
        else  # no pip in the image: a wheel is a zip laid out for site-packages
            "$PY" -c 'import sys, zipfile
for w in sys.argv[2:]: zipfile.ZipFile(w).extractall(sys.argv[1])' "$SITE" "${whl[@]}" || exit 1
        fi
        echo "$stamp" >"$SITE/.stamp"
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
ENV_JSON=$(timeout -k 10 45 "$PY" - "$DEVICE" <<'EOF'
import json, os, platform, sys
import numpy, pandas, pydantic, torch
dev = sys.argv[1]
info = {"step": "env", "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None), "numpy": numpy.__version__,
        "pandas": pandas.__version__, "pydantic": pydantic.VERSION,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "data": os.environ.get("MOE_SHARED_DATA", "../shared/data (default)")}
info["ok"] = dev == "cpu" or info["cuda_available"]
print(json.dumps(info))
EOF
)
rc=$?
if [ $rc -ne 0 ] || [ -z "$ENV_JSON" ]; then
    emit "{\"step\": \"env\", \"ok\": false, \"rc\": $rc, \"error\": \"python/torch import failed\"}"
    echo "GPU CHECK: FAIL (environment) in $((SECONDS - T0)) s"
    exit 1
fi
emit "$ENV_JSON"
if [[ "$ENV_JSON" == *'"ok": false'* ]]; then
    echo "GPU CHECK: FAIL (torch.cuda.is_available() is False; GPU_CHECK_DEVICE=cpu for a dry run)"
    exit 2
fi

# ---- 2. the CUDA-vs-CPU tests (tests/test_gpu.py is the only module marked gpu; the other test modules
# import packages the image lacks: dash, duckdb, ccxt, playwright)
t=$SECONDS
timeout -k 10 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -rfEs \
    --junitxml="$WORK/junit.xml" >"$WORK/pytest.log" 2>&1
rc=$?
cat "$WORK/pytest.log"
emit "$("$PY" - "$WORK/junit.xml" "$rc" "$((SECONDS - t))" "$DEVICE" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
path, rc, secs, device = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
out = {"step": "pytest", "ok": rc == 0, "rc": rc, "seconds": secs}
try:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out.update(passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"], failed=n["failures"],
               errors=n["errors"], skipped=n["skipped"])
    # a run where everything skipped proves nothing on a GPU machine (a cpu dry run: all skip)
    out["ok"] = rc == 0 and (out["passed"] > 0 or device == "cpu")
except (OSError, ET.ParseError, AttributeError):
    out["error"] = "timed out" if rc in (124, 137) else "no junit report"
print(json.dumps(out))
EOF
)"

# ---- 3./4. benchmarks on the device: each prints ONE JSON object as its last stdout line
wrap_json() {  # bench stdout file, step, seconds -> its last line as a step's JSON line (fails if not JSON)
    "$PY" - "$@" 2>/dev/null <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().strip().splitlines()
d = json.loads(lines[-1])
print(json.dumps({"step": sys.argv[2], "ok": True, "seconds": float(sys.argv[3]), **d}))
EOF
}

bench() {  # name, timeout, script and args
    local name=$1 limit=$2 t=$SECONDS rc wrapped
    shift 2
    timeout -k 10 "$limit" "$PY" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
    rc=$?
    if [ $rc -eq 0 ] && wrapped=$(wrap_json "$WORK/$name.out" "$name" "$((SECONDS - t))"); then
        emit "$wrapped"
    else
        cat "$WORK/$name.out" "$WORK/$name.err" >"$WORK/$name.log"
        emit "$(fail_line "$name" "$rc" "$((SECONDS - t))" "$WORK/$name.log")"
    fi
}
bench bench_kronos 110 bench/bench_kronos.py --device "$DEVICE"
bench bench_inference 110 bench/bench_inference.py --device "$DEVICE" --no-training --candles 2000

# ---- summary
[ -n "${OUT:-}" ] && cp "$JSONL" "$OUT/gpu_check.jsonl"
"$PY" - "$JSONL" "$((SECONDS - T0))" <<'EOF'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]
by = {r["step"]: r for r in rows}
ok = all(r.get("ok") for r in rows) and {"env", "pytest", "bench_kronos", "bench_inference"} <= set(by)
parts = [f"gpu {by.get('env', {}).get('gpu')}"]
if "pytest" in by:
    p = by["pytest"]
    parts.append(f"tests {p.get('passed', '?')} passed / {p.get('failed', '?')} failed / "
                 f"{p.get('errors', '?')} errors / {p.get('skipped', '?')} skipped")
k = by.get("bench_kronos", {})
parts.append(f"kronos small {k['small_s']} s, speedup {k['speedup']}x, greedy_equal {k['greedy_equal']}"
             if k.get("ok") else f"bench_kronos FAILED ({k.get('error')})")
i = by.get("bench_inference", {})
parts.append(f"inference p50 {i['p50_ms']} ms p99 {i['p99_ms']} ms on {i['device']}"
             if i.get("ok") else f"bench_inference FAILED ({i.get('error')})")
print(f"GPU CHECK: {'PASS' if ok else 'FAIL'} in {sys.argv[2]} s: " + "; ".join(parts))
sys.exit(0 if ok else 1)
EOF
