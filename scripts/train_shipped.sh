#!/usr/bin/env bash
# How the shipped checkpoints were made (2-core CPU, no GPU). Logs land beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/sacvit-edge
# 1. the DeiT "pretrained" backbone: 5 epochs from scratch (~40 min)
$S train --arch deit -o checkpoints/deit_tiny_112_pre.pt --epochs 5 --threads 2
# 2. SAC-ViT fine-tuned from it, as users would from a pretrained DeiT: 2 epochs, clustering on after 1/3
$S train --init checkpoints/deit_tiny_112_pre.pt -o checkpoints/sacvit_tiny_112.pt --epochs 2 --lr 5e-4 \
  --warmup-share 0.333 --warmup-steps 50 --threads 2
# 3. its default exit threshold, chosen on held-out canvases (last 5,000 train items, another layout seed)
$S tune-eta checkpoints/sacvit_tiny_112.pt --tolerance 0.25
# 4. the baseline gets the same 2 extra epochs at the same learning rate: equal training budget
$S train --arch deit --init checkpoints/deit_tiny_112_pre.pt -o checkpoints/deit_tiny_112.pt --epochs 2 --lr 5e-4 \
  --warmup-steps 50 --threads 1
