"""A bounded soak, opt-in (`make soak`, or `pytest -m soak`): steady mixed load for
SOAK_SECONDS (default 180), memory of the server and of every stub process measured after a
warm-up and at the end. Stated bound: no process grows by more than 20% + 30 MB."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from export.tools import payloads
from triton_embeddings.client import AsyncEmbeddingClient
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, ClipPipelineNames

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))


def rss_by_process(group: int) -> dict[str, int]:
    """Resident memory (bytes) of each process in a process group, by name and pid."""
    sizes = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            status = (proc / "status").read_text()
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) != group:
            continue
        name = Path(args[1].decode()).parent.parent.name if len(args) > 1 and b"stub" in args[0] else "tritonserver"
        rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
        sizes[f"{name}[{proc.name}]"] = rss
    return sizes


async def steady_load(url: str, seconds: float) -> int:
    texts, images = payloads.texts(500, seed=11), payloads.images(8, sizes=((640, 480), (320, 240)))
    image_model = ClipPipelineNames("clip-tiny").image
    done, stop = 0, time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        index = offset
        async with AsyncEmbeddingClient(url, timeout=60) as client:
            while time.monotonic() < stop:
                if index % 4 == 0:
                    await client.embed_image(image_model, [images[index % len(images)]])
                else:
                    await client.embed_text(DEFAULT_TEXT_PIPELINE, texts[index % 400 : index % 400 + 1 + index % 5])
                done, index = done + 1, index + 8

    await asyncio.gather(*(worker(k) for k in range(8)))
    return done


@pytest.mark.soak
def test_memory_stays_bounded_under_steady_load(server) -> None:
    asyncio.run(steady_load(server.options.grpc_url, 20))  # warm-up: arenas and caches fill
    before = rss_by_process(server.process.pid)
    requests = asyncio.run(steady_load(server.options.grpc_url, SOAK_SECONDS))
    after = rss_by_process(server.process.pid)
    assert requests > SOAK_SECONDS  # it did run
    print(f"{requests} requests in {SOAK_SECONDS:.0f} s; resident MB after the warm-up -> at the end:")
    for name in sorted(before):
        print(f"  {name:48} {before[name] / 2**20:8.1f} -> {after.get(name, 0) / 2**20:8.1f}")
    grown = {
        name: (before[name] >> 20, after[name] >> 20)
        for name in before
        if name in after and after[name] > before[name] * 1.2 + (30 << 20)
    }
    assert not grown, f"MB before -> after: {grown}"
