#!/usr/bin/env bash
# GPU check, on a machine with a CUDA GPU and the project installed (`make setup`; for the index's
# GPU tests install faiss-gpu instead of faiss-cpu: `pip install -e '.[gpu]'`). A few minutes.
#
#   scripts/gpu_check.sh [OUT_DIR]        (default gpu-results/)
#
# Writes JSON into OUT_DIR and goes on past a failing step; exits non-zero if any step failed:
#   pytest_gpu.json          `pytest -m gpu`: passed/failed/skipped and the failing test ids
#   bench_rerank_cuda.json   `vip5 bench rerank --device cuda` (small preset, 100 candidates)
#   bench_pipeline_cuda.json `vip5 bench pipeline`, the model worker on CUDA (its --device auto
#                            picks CUDA when torch sees one; the log line "loaded ... on cuda" shows it)
#   gpu_bench.json           scripts/gpu_bench.py: exact trie scoring vs beam for the small and
#                            t5-small presets, item-token scoring requests/s and training steps/s
# and one log per step beside them. PYTHON and VIP5 name the interpreter and the CLI (defaults:
# python and vip5 of the active environment); STEP_TIMEOUT_S bounds each step (default 600).
set -uo pipefail

out_dir=${1:-gpu-results}
python=${PYTHON:-python}
vip5=${VIP5:-vip5}
step_timeout_s=${STEP_TIMEOUT_S:-600}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
cd "$repo"

"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')" || exit 2
failed=()

step() {  # step NAME COMMAND...: run with a time limit, log to NAME.log, remember a failure
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    if ! timeout "$step_timeout_s" "$@" >"$out_dir/$name.log" 2>&1; then
        failed+=("$name")
        echo "   FAILED (see $out_dir/$name.log)"
    fi
    echo "   $((SECONDS - start)) s"
}

step pytest_gpu "$python" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$out_dir/pytest_gpu.xml"
"$python" - "$out_dir/pytest_gpu.xml" "$out_dir/pytest_gpu.json" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
src, dst = map(Path, sys.argv[1:])
cases = ET.parse(src).getroot().iter("testcase") if src.exists() else []
result = {"passed": [], "failed": [], "skipped": []}
for case in cases:
    name = f"{case.get('classname')}::{case.get('name')}"
    kind = "failed" if case.find("failure") is not None or case.find("error") is not None else \
        "skipped" if case.find("skipped") is not None else "passed"
    result[kind].append(name)
dst.write_text(json.dumps({**{k: len(v) for k, v in result.items()}, "failed_tests": result["failed"],
                           "skipped_tests": result["skipped"]}, indent=2))
EOF

step bench_rerank_cuda sh -c "\"$vip5\" bench rerank --device cuda --json > \"$out_dir/bench_rerank_cuda.json\""
step bench_pipeline_cuda sh -c "\"$vip5\" bench pipeline --json > \"$out_dir/bench_pipeline_cuda.json\""
step gpu_bench env PYTHONPATH="$repo" "$python" scripts/gpu_bench.py --device cuda --out "$out_dir/gpu_bench.json"

if ((${#failed[@]})); then
    echo "failed steps: ${failed[*]}"
    exit 1
fi
echo "all steps passed; results in $out_dir"
