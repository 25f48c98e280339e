"""The benchmark (`sacvit-edge bench`): measuring in bench.run, reporting in bench.report.

Needs the [bench] extra (torch, onnx, matplotlib); the deployment runtime never imports it.
"""

DEFAULT_ETAS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)  # plus the checkpoint's own eta
