"""Client for embedding pipelines served by Triton (the `triton-embeddings` project).

    from triton_embeddings import EmbeddingClient

    with EmbeddingClient("localhost:8001") as client:
        vectors = client.embed_text("all-MiniLM-L6-v2", ["a cat", "a dog"])

Needs only tritonclient, numpy and Pillow: `pip install triton-embeddings`.
"""

from triton_embeddings.client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError

__version__ = "0.1.0"
__all__ = ["AsyncEmbeddingClient", "EmbeddingClient", "EmbeddingError", "__version__"]
