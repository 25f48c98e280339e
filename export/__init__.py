"""Export of a trained SAC-ViT into two engines (EE stage, SAC stage)."""
