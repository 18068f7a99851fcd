"""Suspects wherever they live: local files, ONNX, functions and the label-only HTTP protocol
(client and server)."""
