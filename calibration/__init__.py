"""Calibration data readers for INT8 quantisation (filled by later work)."""
