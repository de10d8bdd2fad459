"""Triton Python-backend model: token tensors (or pixels) in, embeddings out, by onnxruntime
on the CPU. The work is encoding.py's, shared with the text_encoder step."""

from encoding import OnnxEncoder


class TritonPythonModel(OnnxEncoder):
    """Reads its inputs as sent: the tokenizer's tensors, an image step's pixels."""
