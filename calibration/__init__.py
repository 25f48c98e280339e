"""Calibration on the user's data: exit threshold, token range, INT8 engines, deadline table.

This folder (`calibration/` in the repository) is installed as `sacvit_edge.calibration`.
`sweep` and `collect` are torch-free (calibration of an export directory runs on the
deployment install); `int8` needs the [export] extra (onnx). See calibrate.py for the flow.
"""
