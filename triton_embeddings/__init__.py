"""Client for embedding pipelines served by Triton (the `triton-embeddings` project).

    from triton_embeddings import EmbeddingClient

    with EmbeddingClient("localhost:8001") as client:  # gRPC; EmbeddingClient("localhost:8000", "http") for HTTP
        vectors = client.embed_text("all-MiniLM-L6-v2", ["a cat", "a dog"])  # np.ndarray (2, 384)

`AsyncEmbeddingClient` has the same methods as coroutines; both raise `EmbeddingError`, after
asking again within a budget (`Retry`) while the server could not serve a request for now.
Modules: `core` (what each call sends and how replies become results, no I/O), `client`
(blocking), `aio` (asyncio), `names` (every model and tensor name). Needs only tritonclient,
numpy and Pillow: `pip install triton-embeddings` (no extras).
"""

from triton_embeddings.aio import AsyncEmbeddingClient
from triton_embeddings.client import EmbeddingClient
from triton_embeddings.core import EmbeddingError, Hit, Retry

__version__ = "0.1.0"
__all__ = ["AsyncEmbeddingClient", "EmbeddingClient", "EmbeddingError", "Hit", "Retry", "__version__"]
