"""Text pipelines from sentence-transformers models: read the model (model.py), trace it to ONNX
and check it (trace.py), write tokenizer, encoder and ensemble (pipeline.py)."""
