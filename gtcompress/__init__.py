"""gtcompress: Generous Teacher distillation inside a deployment pipeline (timm -> ONNX -> TensorRT)."""

__version__ = "0.1.0"
