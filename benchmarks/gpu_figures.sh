#!/usr/bin/env bash
# The figures only a GPU run can give (README: "Training speed" and "Acquisition at scale"), in one
# command that a single GPU finishes in about 8 minutes: the throughput benchmark with every GPU
# pipeline (per-sample, PIL reference, on-device, pre-made, scoring, bf16, channels_last, compile)
# for the README's two GPU steps, WRN-28-2 at 32x32 first, then small_cnn at 28x28 (the demo's 8x8
# step is a CPU figure: add it with THROUGHPUT_CASES), a bf16-mixed + channels_last fit and
# acquisition through the command line, and the acquisition-scale cases at 1,000,000 x 512 that
# fit in the time.
#
#   benchmarks/gpu_figures.sh [OUT_DIR] [PART ...]   (default runs/bench_gpu and every part; one log per part)
#
# PART: throughput, fit, scale; where a job may run 10 minutes at most (a shared GPU queue), run
# "throughput fit" as one job and "scale" as another. Each part prints when it starts, the script when it ends.
# Environment: PYTHON (default python3), THROUGHPUT_SECONDS timed seconds per case (4),
# THROUGHPUT_CASES (wrn28_2 small_cnn),
# SCALE_N (1000000), SCALE_BUDGET (10000), SCALE_CASES (pool_inference entropy assl typiclust
# coreset badge), SCALE_TIMEOUT seconds per scale case (150).
set -euo pipefail
out=${1:-runs/bench_gpu}
shift || true
parts=${*:-throughput fit scale}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
for part in $parts; do
    case $part in throughput|fit|scale) ;; *) echo "unknown part '$part': choose among throughput fit scale" >&2; exit 2 ;; esac
done
wanted() { [[ " $parts " == *" $1 "* ]] && echo "# part $1 starts $(date -u +%T)"; }

"$py" -c "import torch; print('torch', torch.__version__, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" \
    | tee "$out/device.txt"

if wanted throughput; then
    # shellcheck disable=SC2086
    "$py" benchmarks/throughput.py --seconds "${THROUGHPUT_SECONDS:-4}" --cases ${THROUGHPUT_CASES:-wrn28_2 small_cnn} 2>&1 | grep -E "^(throughput|#)" | tee "$out/throughput.txt"
fi

# bf16-mixed and channels_last end to end: two fits, online scores, an acquisition
if wanted fit; then
    "$py" -m al_lightning.cli fit --config configs/assl_digits.yaml --trainer.precision bf16-mixed \
        --model.init_args.channels_last true --loop.rounds 1 --trainer.enable_progress_bar false \
        --trainer.logger.init_args.save_dir "$out" 2>&1 | grep -E "cycle|labels|error|Error" | tee "$out/bf16_fit.txt"
fi

if wanted scale; then
    # shellcheck disable=SC2086
    "$py" benchmarks/acquisition_scale.py --n "${SCALE_N:-1000000}" --budget "${SCALE_BUDGET:-10000}" \
        --timeout "${SCALE_TIMEOUT:-150}" --cases ${SCALE_CASES:-pool_inference entropy assl typiclust coreset badge} \
        2>&1 | tee "$out/scale.txt"
fi
echo "# done $(date -u +%T)"
