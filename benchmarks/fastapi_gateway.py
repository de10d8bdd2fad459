"""The baseline this project replaces: a minimal FastAPI gateway in front of Triton.

As the common gateway designs do, it tokenizes in the gateway (Python, tokenizers) and calls
the encoder model on Triton over gRPC, then returns the embedding as JSON. Written for the
side-by-side benchmark only; run by it with uvicorn:

    GATEWAY_TRITON=localhost:8001 GATEWAY_ENCODER=all-MiniLM-L6-v2_encoder \\
    GATEWAY_TOKENIZER=model_repository/all-MiniLM-L6-v2_tokenizer \\
    uvicorn benchmarks.fastapi_gateway:app --port 9000

POST /embed {"text": "..."} -> {"embedding": [...]}
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient
from fastapi import FastAPI
from pydantic import BaseModel

from export.repository.config import read_config
from export.steps.writers import TokenizerSettings

_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class EmbedRequest(BaseModel):
    text: str


_TOKENIZER_DIR = Path(os.environ["GATEWAY_TOKENIZER"])
TOKENIZER = TokenizerSettings.from_model(_TOKENIZER_DIR).load()  # the served tokenizer's file and settings
INPUTS = [output.name for output in read_config(_TOKENIZER_DIR).output]
ENCODER = os.environ["GATEWAY_ENCODER"]
app = FastAPI()
_client: grpcclient.InferenceServerClient | None = None


def client() -> grpcclient.InferenceServerClient:
    global _client
    if _client is None:  # created inside the server's event loop
        _client = grpcclient.InferenceServerClient(os.environ["GATEWAY_TRITON"])
    return _client


@app.post("/embed")
async def embed(request: EmbedRequest) -> dict:
    encoding = TOKENIZER.encode(request.text)
    tensors = []
    for name in INPUTS:
        values = np.array([getattr(encoding, _FIELDS[name])], dtype=np.int64)
        tensor = grpcclient.InferInput(name, list(values.shape), "INT64")
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    result = await client().infer(ENCODER, tensors)
    return {"embedding": result.as_numpy("EMBEDDING")[0].tolist()}
