#!/usr/bin/env bash
# Run a recipe on N nodes with Slurm: one `accelerate launch` per node, each starting one process per GPU.
#   sbatch --nodes=4 launch/slurm.sh <recipe> [key=value ...]
#   sbatch --nodes=4 --export=ALL,ACCELERATE_CONFIG=launch/zero2.yaml launch/slurm.sh dapo_math_r1_distill
# Preemption: Slurm sends SIGTERM; every rank finishes its step, a checkpoint is written, and a requeued job
# continues from it (trainer.resume=auto with the same output dir, set below from the job name).
#SBATCH --job-name=deepseek-rl
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
RECIPE=${1:?usage: sbatch launch/slurm.sh <recipe> [key=value ...]}
shift
CONFIG=${ACCELERATE_CONFIG:-launch/zero3.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
OUTPUT_DIR=${OUTPUT_DIR:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}

srun --kill-on-bad-exit=1 bash -c "accelerate launch \
    --config_file $CONFIG \
    --num_machines $SLURM_NNODES \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_IP \
    --main_process_port 29500 \
    -m deepseek_rl.train --config-name $RECIPE \
    trainer.output_dir=$OUTPUT_DIR trainer.resume=auto $*"
