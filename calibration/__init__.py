"""Calibration on the user's data (exit threshold, token range, INT8): later work.

This folder (`calibration/` in the repository) is installed as `sacvit_edge.calibration`.
"""
