#!/usr/bin/env bash
# Run a recipe on N nodes with Slurm: one `accelerate launch` per node, each starting one process per GPU.
#   sbatch --nodes=4 launch/slurm.sh math_dapo_r1_distill [key=value ...]
#   sbatch --nodes=2 --export=ALL,ACCELERATE_CONFIG=launch/zero2.yaml launch/slurm.sh gsm8k_grpo_r1_distill
# Preemption and time limits: Slurm signals this batch shell 120 s ahead (--signal=B:TERM@120; a preemption sends
# SIGTERM too). The trap below forwards SIGTERM to srun, srun to every node's `accelerate launch`, and its agent to
# every rank: each rank finishes its step, writes a checkpoint and stops. The agent waits for them up to
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (110 here, inside the 120 s notice) before killing them. The job then
# requeues itself and exits 75; the requeued job continues from the checkpoint (trainer.resume=auto, same output
# dir). Override MAIN_PORT, GPUS_PER_NODE, OUTPUT_DIR and ACCELERATE_CONFIG through the environment.
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
MAIN_PORT=${MAIN_PORT:-29500}
OUTPUT_DIR=${OUTPUT_DIR:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-110}
PREEMPTED_EXIT=75

# `standard`: with a DeepSpeed config on several nodes, accelerate would otherwise start ranks over pdsh itself.
srun --kill-on-bad-exit=1 bash -c "exec accelerate launch \
    --config_file $CONFIG \
    --num_machines $SLURM_NNODES \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_IP \
    --main_process_port $MAIN_PORT \
    --deepspeed_multinode_launcher standard \
    -m deepseek_rl.train --config-name $RECIPE \
    trainer.output_dir=$OUTPUT_DIR trainer.resume=auto $*" &
SRUN_PID=$!

preempted=0
forward_term() {
    preempted=1
    echo "deepseek-rl: SIGTERM: forwarding it to every rank (checkpoint, then stop)" >&2
    kill -TERM "$SRUN_PID" 2>/dev/null || true
}
trap forward_term TERM

status=0
while true; do
    wait "$SRUN_PID" && status=0 || status=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break  # `wait` also returns when the trap ran: wait again until srun ends
done

if [ "$preempted" = 1 ]; then
    echo "deepseek-rl: stopped by SIGTERM (status $status); requeueing job $SLURM_JOB_ID to resume from $OUTPUT_DIR" >&2
    scontrol requeue "$SLURM_JOB_ID" || echo "deepseek-rl: requeue failed; resubmit to resume" >&2
    exit "$PREEMPTED_EXIT"
fi
exit "$status"
