"""PyTorch eager backend (CPU or CUDA): the numerical reference for the other backends.

On CUDA it runs the same device-resident orchestration as the TensorRT backend: the image is
uploaded once, the EE features stay on the GPU, only the EE logits and the clustering scores come
back for the gate and the split, the SAC group's indices and keep masks go up, and the target
patches are cut on the GPU (tokens.crop_target_patches on tensors). All of it on one CUDA stream
per calling thread (PyTorch's current stream), synchronised by the copies back to the host.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from sacvit_edge.errors import BackendError
from sacvit_edge.tokens import SacGroup, crop_target_patches

from .base import SAC_FEEDS, BackendBase, EEResult, cpu_name

log = logging.getLogger(__name__)


class TorchBackend(BackendBase):
    name = "pytorch"

    def __init__(self, checkpoint: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        from sacvit_edge.checkpoint import load_checkpoint
        from sacvit_edge.model import SACViT

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("backend 'pytorch-cuda': no CUDA GPU is visible to PyTorch")
        if threads and threads != torch.get_num_threads():
            # torch's intra-op pool is the process's: the application sets it (the CLI does, for
            # --threads), never a backend constructor behind the other models' backs
            log.warning("backend 'pytorch': threads=%d asked, torch uses %d; call torch.set_num_threads(%d) in your "
                        "application to change it", threads, torch.get_num_threads(), threads)
        self.threads = torch.get_num_threads()
        self.model = load_checkpoint(checkpoint).model.to(device).eval()
        if not isinstance(self.model, SACViT):
            raise BackendError(f"{checkpoint} is a {self.model.cfg.arch} model, not SAC-ViT")
        self._device = torch.device(device)
        self.name = "pytorch-cuda" if self._device.type == "cuda" else "pytorch"
        # host -> device copies from pinned memory may run asynchronously (CUDA only)
        self._non_blocking = self._device.type == "cuda"

    def _up(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self._non_blocking:
            t = t.pin_memory()
        return t.to(self._device, non_blocking=self._non_blocking)

    @torch.inference_mode()
    def run_ee(self, image: np.ndarray) -> EEResult:
        img = self._up(image)  # uploaded once: the SAC stage cuts its patches from this copy
        out = self.model.forward_ee(img)
        logits, gca = (t.float().cpu().numpy() for t in (out.logits, out.gca))  # the only copies back
        return EEResult(logits=logits, gca=gca, final=out.final, hidden=out.hidden, image=img)

    @torch.inference_mode()
    def run_sac(self, ee: EEResult, rows: np.ndarray, group: SacGroup) -> np.ndarray:
        r = self._up(np.asarray(rows, dtype=np.int64))
        t_idx = self._up(group.target_idx)
        patches = crop_target_patches(ee.image.index_select(0, r), t_idx, self.model.cfg.patch_size)
        out = self.model.forward_sac(patches, t_idx, self._up(group.nontarget_idx), ee.final.index_select(0, r),
                                     ee.hidden.index_select(0, r), self._up(group.target_keep),
                                     self._up(group.nontarget_keep))
        return out.float().cpu().numpy()

    def run_sac_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The SAC stage on host arrays (export checks compare it with ONNX Runtime input for input)."""
        with torch.inference_mode():
            args = [self._up(feeds[k]) for k in SAC_FEEDS]
            return self.model.forward_sac(*args).float().cpu().numpy()

    def device(self) -> str:
        return torch.cuda.get_device_name(self._device) if self._device.type == "cuda" else cpu_name()

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device(), "threads": self.threads, "torch": torch.__version__,
                "device_resident": self._device.type == "cuda"}

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
