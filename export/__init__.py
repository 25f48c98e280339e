"""Converters from a trained checkpoint to deployable artifacts (Ultralytics-style).

This folder (`export/` in the repository) is installed as `sacvit_edge.export`: import it as
`from sacvit_edge.export.bundle import export_checkpoint`. ONNX writing (torch2onnx, bundle)
needs the [export] extra (torch, onnx); the TensorRT engine builder (tensorrt) needs the
[tensorrt] extra. The manifest these write is read by the torch-free sacvit_edge.manifest.
"""
