"""Serve sentence-transformers and open_clip embedding models on NVIDIA Triton.

`python -m export text ...` writes a Triton model repository (tokenizer, ONNX encoder and an
ensemble per pipeline); `python -m export serve` runs Triton on it. See README.md.
"""

__version__ = "0.1.0"
