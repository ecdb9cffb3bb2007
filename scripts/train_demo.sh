#!/usr/bin/env bash
# Train the bundled demo model (assets/demo/model) from scratch on procedural data, on one GPU.
#
#   bash scripts/train_demo.sh                 # every stage
#   bash scripts/train_demo.sh data vae        # only some stages, in order: data vae latents dit export
#
# Environment: DEMO_DATA (data/demo), DEMO_RUNS (runs), DEMO_OBJECTS (192 procedural objects),
# DEMO_WORKERS (nproc), DEMO_VAE_STEPS / DEMO_DIT_STEPS (the configs' max_steps), DEMO_VAE_MINUTES /
# DEMO_DIT_MINUTES (wall-clock budgets: training checkpoints and stops when spent; a later run with the
# same stage resumes), DEMO_RELEASE (releases/demo). Dotted overrides for both trainers may follow `--`.
set -euo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
DATA=${DEMO_DATA:-data/demo}
RUNS=${DEMO_RUNS:-runs}
RELEASE=${DEMO_RELEASE:-releases/demo}
OBJECTS=${DEMO_OBJECTS:-192}
WORKERS=${DEMO_WORKERS:-$(nproc)}
stages=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do stages+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#stages[@]} -gt 0 ] || stages=(data vae latents dit export)

for stage in "${stages[@]}"; do
    echo "== demo stage: $stage"
    case $stage in
    data)
        $PY scripts/prepare_data.py --out "$DATA" --procedural "$OBJECTS" --seed 0 --num-frames 16 \
            --num-views 16 --resolution 128 --num-points 4096 --extractor simple --workers "$WORKERS" --no-progress ;;
    vae)
        $PY train_vae.py --config configs/demo/vae.yaml --run-dir "$RUNS/demo_vae" \
            --resume auto --no-progress --no-tensorboard ${DEMO_VAE_STEPS:+--max-steps $DEMO_VAE_STEPS} \
            data.data_dir="$DATA" ${DEMO_VAE_MINUTES:+train.max_minutes=$DEMO_VAE_MINUTES} "$@" ;;
    latents)
        $PY scripts/encode_latents.py --vae-checkpoint "$RUNS/demo_vae" --data-dir "$DATA" --mixed-precision bf16 --overwrite
        $PY scripts/latent_stats.py --latents-dir "$DATA/latents" ;;
    dit)
        $PY train_diffusion.py --config configs/demo/diffusion.yaml --run-dir "$RUNS/demo_diffusion" \
            --resume auto --no-progress --no-tensorboard ${DEMO_DIT_STEPS:+--max-steps $DEMO_DIT_STEPS} \
            data.data_dir="$DATA" data.latents_dir="$DATA/latents" train.vae_checkpoint="$RUNS/demo_vae" \
            ${DEMO_DIT_MINUTES:+train.max_minutes=$DEMO_DIT_MINUTES} "$@" ;;
    export)
        $PY scripts/export_release.py --diffusion-checkpoint "$RUNS/demo_diffusion" --vae-checkpoint "$RUNS/demo_vae" --out "$RELEASE" ;;
    *)
        echo "unknown stage: $stage" >&2; exit 2 ;;
    esac
done
