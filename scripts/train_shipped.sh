#!/usr/bin/env bash
# How the shipped checkpoints were made (2-core CPU, no GPU; ~2.5 h in all). Logs land beside them.
# Equal budget: after the shared 5-epoch DeiT backbone, SAC-ViT and the DeiT baseline each get
# the same 2 + 3 epochs at the same learning rates.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/sacvit-edge
STAGE=checkpoints/stage1   # the 7-epoch intermediates (not shipped); their logs are kept there
mkdir -p "$STAGE"
# 1. the DeiT "pretrained" backbone: 5 epochs from scratch (~40 min)
$S train --arch deit -o checkpoints/deit_tiny_112_pre.pt --epochs 5 --threads 2
# 2. SAC-ViT fine-tuned from it, as users would from a pretrained DeiT: 2 epochs, clustering on after 1/3 (~13 min)
$S train --init checkpoints/deit_tiny_112_pre.pt -o $STAGE/sacvit_tiny_112.pt --epochs 2 --lr 5e-4 \
  --warmup-share 0.333 --warmup-steps 50 --threads 2
# 3. ...and 3 more epochs from there, clustering on throughout (~21 min)
$S train --init $STAGE/sacvit_tiny_112.pt -o checkpoints/sacvit_tiny_112.pt --epochs 3 --lr 3e-4 \
  --warmup-share 0 --warmup-steps 50 --threads 1
# 4. its default exit threshold, chosen on held-out canvases (last 5,000 train items, another layout seed)
$S tune-eta checkpoints/sacvit_tiny_112.pt --tolerance 0.25 --in-place
# 5. the baseline gets the same 2 + 3 extra epochs at the same learning rates: equal training budget
$S train --arch deit --init checkpoints/deit_tiny_112_pre.pt -o $STAGE/deit_tiny_112.pt --epochs 2 --lr 5e-4 \
  --warmup-steps 50 --threads 1
$S train --arch deit --init $STAGE/deit_tiny_112.pt -o checkpoints/deit_tiny_112.pt --epochs 3 --lr 3e-4 \
  --warmup-steps 50 --threads 1
