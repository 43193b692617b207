#!/usr/bin/env bash
# Mini-Omni's recipe (experiment=mini_omni) under torchrun, on one node or several.
# Preparation (data, Qwen2-0.5B, whisper-small, SNAC): docs/recipes/mini_omni.md.
#
#   DATA_ROOT=/data scripts/torchrun.sh                         # one node, 8 GPUs
#   DATA_ROOT=/data NPROC_PER_NODE=4 scripts/torchrun.sh        # 4 GPUs: 24 rows x 2 accumulation steps, still 192
#   # two nodes: run on each, the same RUN_DIR on shared storage, NODE_RANK 0 and 1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 RUN_DIR=/shared/runs/mo DATA_ROOT=/data scripts/torchrun.sh
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 RUN_DIR=/shared/runs/mo DATA_ROOT=/data scripts/torchrun.sh
#
# Arguments are passed on to omni-train as Hydra overrides. Run from anywhere; relative paths in the
# config (checkpoints/, data/, outputs/) are taken from the repository root, where this script cds to.
# Rerunning the same command resumes (resume=auto): finished stages are skipped, the current one
# continues from <RUN_DIR>/<stage>/checkpoints/last.ckpt.
set -euo pipefail
cd "$(dirname "$0")/.."

NNODES=${NNODES:-1}                          # machines taking part
NODE_RANK=${NODE_RANK:-0}                    # this machine's index, 0 .. NNODES-1
NPROC_PER_NODE=${NPROC_PER_NODE:-8}          # GPUs used on each machine (one process each)
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}        # host name or address of the NODE_RANK 0 machine, reachable from all
MASTER_PORT=${MASTER_PORT:-29500}            # a free TCP port on it
DATA_ROOT=${DATA_ROOT:-data}                 # data.root: the layout of docs/recipes/mini_omni.md
RUN_DIR=${RUN_DIR:-outputs/torchrun/mini_omni}  # fixed: every process runs Hydra itself, and the default is a timestamp
GLOBAL_BATCH=${GLOBAL_BATCH:-192}            # Mini-Omni's batch, split over all GPUs
MICRO_BATCH=${MICRO_BATCH:-24}               # most rows (of <= 2048 tokens) a GPU takes at once: the preset's 24
WHISPER=${WHISPER:-checkpoints/whisper/small.pt}
SNAC=${SNAC:-checkpoints/snac_24khz}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # loader workers use the CPUs; torchrun would set 1 and warn
export PYTHONUNBUFFERED=1
# export NCCL_SOCKET_IFNAME=eth0            # multi-node: the network interface the nodes reach each other on
# export NCCL_DEBUG=WARN

GPUS=$((NNODES * NPROC_PER_NODE))
PER_GPU=$((GLOBAL_BATCH / GPUS))                             # rows a GPU contributes to one optimizer step
ACCUM=$(( (PER_GPU + MICRO_BATCH - 1) / MICRO_BATCH ))       # fewer GPUs: accumulate gradients instead
ROWS=$((PER_GPU / ACCUM))                                    # rows a GPU takes in one forward pass
if [ "${PER_GPU}" -lt 1 ] || [ $((ROWS * ACCUM * GPUS)) -ne "${GLOBAL_BATCH}" ]; then
  echo "GLOBAL_BATCH=${GLOBAL_BATCH} does not split evenly over ${GPUS} GPUs x ${ACCUM} accumulation steps" >&2
  exit 1
fi

# Lightning sees torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) and joins
# its process group; trainer.devices/num_nodes must match --nproc_per_node/--nnodes.
# If the other ranks time out at the start, the rank-0 WER pass before stage 1 (on CPU) took too
# long: add eval.asr_max_utterances=100 (or eval.asr=null).
exec torchrun \
  --nnodes "${NNODES}" --node_rank "${NODE_RANK}" --nproc_per_node "${NPROC_PER_NODE}" \
  --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}" \
  -m omni_train.cli.train experiment=mini_omni \
  data.root="${DATA_ROOT}" \
  model.whisper="${WHISPER}" model.snac="${SNAC}" \
  trainer.num_nodes="${NNODES}" trainer.devices="${NPROC_PER_NODE}" \
  data.max_batch_size="${ROWS}" data.max_tokens=$((ROWS * 2048)) trainer.accumulate_grad_batches="${ACCUM}" \
  hydra.run.dir="${RUN_DIR}" resume=auto \
  "$@"
