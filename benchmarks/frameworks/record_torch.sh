#!/bin/sh
# Every PyTorch recording in measurements/, one process per (model, strategy, batch), one thread each.
# Usage: sh benchmarks/frameworks/record_torch.sh [standard|proposed|"standard proposed"]   (needs the `frameworks` extra)
set -e
cd "$(dirname "$0")/../.."
M=benchmarks/frameworks/models
E=benchmarks/frameworks/export-models
for strategy in ${1:-standard}; do
  for spec in "digits-mlp 32 128 512" "digits-cnn 32 128 512" "mlp 32 100 256" "cnv 16 64 128" \
              "binarynet 8 32 64" "$M/torch-resnet-a.yaml 8 32 128" "$M/torch-resnet-b.yaml 16 64 256" \
              "resnete18 1 2 4" "bireal18 1 2 4" "$E/bireal-block.yaml 16 64 256" "$E/dropout-head.yaml 16 64 256" \
              "$E/reactnet-block.yaml 16 64 256"; do
    set -- $spec; model=$1; shift
    for b in "$@"; do
      python benchmarks/frameworks/torch_measure.py "$model" --batch "$b" --strategy "$strategy"
    done
  done
done
