#!/usr/bin/env bash
# How the shipped checkpoints were made (2-core CPU, no GPU): the one-command recipe, run as a user
# would, from a DeiT backbone. Equal budget: SAC-ViT and the DeiT baseline each get the same 5 epochs
# from the same backbone with the same flags. ~40 min for the backbone, then ~2 h for each
# fine-tune (the two ran side by side). The previous, three-stage manual recipe is in
# checkpoints/README.md ("The previous pair").
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/sacvit-edge
# 1. the DeiT "pretrained" backbone: 5 epochs from scratch
$S train --arch deit -o checkpoints/deit_tiny_112_pre.pt --epochs 5 --threads 2
# 2. SAC-ViT: warm stage, clustering, EE distillation and the exit threshold, in one command
$S train --init checkpoints/deit_tiny_112_pre.pt --epochs 5 --threads 1 -o checkpoints/sacvit_tiny_112.pt
# 3. the baseline: the same command and flags, --arch deit
$S train --init checkpoints/deit_tiny_112_pre.pt --epochs 5 --threads 1 -o checkpoints/deit_tiny_112.pt --arch deit
