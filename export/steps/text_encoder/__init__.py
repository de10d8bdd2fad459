"""Python-backend model: the tokenizer and the ONNX encoder in one step (--tokenize-in-encoder)."""
