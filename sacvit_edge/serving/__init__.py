"""Serving SAC-ViT on Triton Inference Server, with the early exit inside the server.

- `repository`: an export directory -> a Triton model repository: the EE and SAC engines as
  models of their own (Triton's `onnxruntime` backend, or ONNX Runtime inside the Python
  backend where the server has no `onnxruntime` backend) and a Python-backend Business Logic
  Scripting (BLS) model that decodes, gates, splits and calls the SAC model only for the images
  that did not exit. Configs are written with Triton's own model-config protobuf.
- `models`: the Python-backend model classes those repositories' model.py files name.
- `server`: starts a real `tritonserver` (the one PyTriton bundles, or one on PATH) on a
  repository, waits until it is ready, stops it (SIGTERM drains in-flight requests).
- `loadtest`: concurrent tritonclient clients against a running server (`sacvit-edge serve-bench`).

Needs the [serve] extra (nvidia-pytriton for the server binary, tritonclient), except `models`,
which runs inside the server's Python backend and needs only the core install.
"""
