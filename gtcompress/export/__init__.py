"""Export: ONNX and TensorRT artefacts of a run's model, each verified against PyTorch (see exporter.py)."""
