"""Write the bundled sample images: the first test canvas of each class (seed 0)."""

from pathlib import Path

import numpy as np
from PIL import Image

from sacvit_edge.data import FASHION_CLASSES, ClutteredFashionMNIST

out = Path(__file__).resolve().parents[1] / "sacvit_edge" / "assets" / "samples"
out.mkdir(parents=True, exist_ok=True)
ds = ClutteredFashionMNIST("test", seed=0)
labels = ds.labels.numpy()
for c, name in enumerate(FASHION_CLASSES):
    idx = int(np.flatnonzero(labels == c)[0])
    img = ds.render(np.array([idx]))[0].permute(1, 2, 0).numpy()
    Image.fromarray(img).save(out / f"{idx:05d}_{name.replace('/', '-').replace(' ', '-')}.png")
print(sorted(p.name for p in out.iterdir()))
