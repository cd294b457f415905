#!/usr/bin/env bash
# Multi-node DDP with torchrun. Run the same command on every node, changing NODE_RANK:
#   NNODES=2 NODE_RANK=0 GPUS=8 MASTER_ADDR=node0 ./launch/torchrun.sh configs/assl_cifar10.yaml
# batch_size in the config is per device: the global batch is batch_size x GPUS x NNODES.
# Download the dataset once beforehand (data.download: true on one node, or copy it to data.root).
# ACCELERATOR=cpu runs GPUS processes per node on the CPU instead (gloo), e.g. to try a launch.
set -euo pipefail
CONFIG=${1:?usage: launch/torchrun.sh CONFIG [extra al-lightning arguments]}
shift
exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "${GPUS:-1}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m al_lightning.cli fit --config "$CONFIG" \
  --trainer.accelerator "${ACCELERATOR:-gpu}" --trainer.devices "${GPUS:-1}" --trainer.num_nodes "${NNODES:-1}" \
  --trainer.strategy ddp "$@"
