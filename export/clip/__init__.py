"""CLIP pipelines from open_clip models: read the model (model.py), trace both towers to ONNX and
check them (trace.py), write the text, image and classify pipelines (pipeline.py)."""
