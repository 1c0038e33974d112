#!/usr/bin/env bash
# The GPU check (python -m deepseek_rl.tools.gpu_check) on a GPU machine without network, from the checkout's root:
#   bash launch/gpu_check.sh download            # here, with network: the wheels of launch/gpu_wheels.txt (Python
#                                                # 3.12, x86_64) and the R1 tokenizer into .gpu/ (about 13 MiB)
#   bash launch/gpu_check.sh run [ARGS...]       # there, with .gpu/ carried: install the wheels beside the machine's
#                                                # own packages (in /tmp, nothing of the system changes), run the check
# e.g. bash launch/gpu_check.sh run --shape r1_1.5b --output report.json (docs/benchmarks.md has the figures).
set -euo pipefail
[ -d deepseek_rl ] || { echo "gpu_check.sh: run it from the checkout's root (where deepseek_rl/ is)" >&2; exit 2; }
GPU_DIR=${DEEPSEEK_RL_GPU_DIR:-.gpu}
TOKENIZER=tokenizers/deepseek-r1-distill-qwen-1.5b
case "${1:-}" in
download)
    mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/shared/$TOKENIZER"
    grep -v '^#' launch/gpu_wheels.txt | while read -r requirement; do
        [ -n "$requirement" ] || continue
        # a pure-Python wheel for Python 3.12 on x86_64, else a wheel built here from the source release
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$GPU_DIR/wheels" "$requirement" 2>/dev/null ||
            python3 -m pip wheel -q --no-deps -w "$GPU_DIR/wheels" "$requirement"
    done
    source=$(python3 -c "from deepseek_rl.paths import shared_dir; print(shared_dir())")/$TOKENIZER
    for name in tokenizer.json tokenizer_config.json config.json generation_config.json; do
        cp "$source/$name" "$GPU_DIR/shared/$TOKENIZER/"
    done
    du -sh "$GPU_DIR"
    ;;
run)
    shift
    site=/tmp/deepseek-rl-gpu-site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$GPU_DIR"/wheels/*.whl
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" DEEPSEEK_RL_SHARED="$PWD/$GPU_DIR/shared" HF_HUB_OFFLINE=1
    exec python3 -m deepseek_rl.tools.gpu_check "$@"
    ;;
*)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
