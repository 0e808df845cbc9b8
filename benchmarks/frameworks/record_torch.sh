#!/bin/sh
# Every PyTorch recording in measurements/, one process per (model, strategy, batch), one thread each.
# Usage: sh benchmarks/frameworks/record_torch.sh [standard|proposed|"standard proposed"] [FOLDER]
# (needs the `frameworks` extra). FOLDER, under measurements/, takes the recordings of another machine:
# `sh benchmarks/frameworks/record_torch.sh "standard proposed" probes/torch-amd` made those of the AMD EPYC.
set -e
cd "$(dirname "$0")/../.."
FOLDER=$2
[ -z "$FOLDER" ] || mkdir -p "benchmarks/frameworks/measurements/$FOLDER"
M=benchmarks/frameworks/models
E=benchmarks/frameworks/export-models
for strategy in ${1:-standard}; do
  for spec in "digits-mlp 32 128 512" "digits-cnn 32 128 512" "mlp 32 100 256" "cnv 16 64 128" \
              "binarynet 8 32 64" "$M/torch-resnet-a.yaml 8 32 128" "$M/torch-resnet-b.yaml 16 64 256" \
              "resnete18 1 2 4" "bireal18 1 2 4" "$E/bireal-block.yaml 16 64 256" "$E/dropout-head.yaml 16 64 256" \
              "$E/reactnet-block.yaml 16 64 256"; do
    set -- $spec; model=$1; shift
    for b in "$@"; do
      if [ -n "$FOLDER" ]; then out="--out $FOLDER/pytorch-$(basename "$model" .yaml)-$strategy-b$b"; else out=; fi
      python benchmarks/frameworks/torch_measure.py "$model" --batch "$b" --strategy "$strategy" $out
    done
  done
done
