"""A load test against a running Triton server (`sacvit-edge serve-bench`): N concurrent
tritonclient clients, one image per request, as cameras send them.

Reported per served model: throughput, p50/p99 request latency (client side, loopback), exit
rate, and the batch sizes Triton's dynamic batcher formed (from its statistics API, the
difference over the run); and, for comparison, the in-process `EdgeClassifier.predict_batch`
on the same images at the server's largest batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from sacvit_edge.extras import require_extra


@dataclass
class LoadResult:
    """One run (or several merged): what a table row and the JSON report show."""

    name: str
    clients: int
    seconds: float
    latencies_ms: np.ndarray  # one per answered request
    exited: np.ndarray  # bool, one per answered request
    batch_sizes: dict[int, int] = field(default_factory=dict)  # batch size -> executions
    errors: int = 0
    rounds: int = 1

    @property
    def images(self) -> int:
        return len(self.latencies_ms)

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 50)) if self.images else float("nan")

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99)) if self.images else float("nan")

    @property
    def exit_rate(self) -> float | None:
        return float(self.exited.mean()) if self.images else None

    @property
    def throughput(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def merged(self, other: "LoadResult") -> "LoadResult":
        """This run and another of the same model: times add, latencies pool, batches add."""
        sizes = dict(self.batch_sizes)
        for b, n in other.batch_sizes.items():
            sizes[b] = sizes.get(b, 0) + n
        return LoadResult(self.name, self.clients, self.seconds + other.seconds,
                          np.concatenate([self.latencies_ms, other.latencies_ms]),
                          np.concatenate([self.exited, other.exited]), sizes, self.errors + other.errors,
                          self.rounds + other.rounds)

    @property
    def mean_batch(self) -> float | None:
        runs = sum(self.batch_sizes.values())
        return sum(b * n for b, n in self.batch_sizes.items()) / runs if runs else None

    def to_dict(self) -> dict:
        return {"name": self.name, "clients": self.clients, "rounds": self.rounds, "images": self.images,
                "seconds": self.seconds, "throughput_img_s": self.throughput, "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms, "exit_rate": self.exit_rate, "errors": self.errors, "mean_batch": self.mean_batch,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}


def _batch_stats(url: str, model: str) -> dict[int, int]:
    """Executions per batch size so far (Triton's statistics extension)."""
    import tritonclient.http as http

    stats = http.InferenceServerClient(url).get_inference_statistics(model)
    out: dict[int, int] = {}
    for m in stats.get("model_stats", []):
        for b in m.get("batch_stats", []):
            out[int(b["batch_size"])] = out.get(int(b["batch_size"]), 0) + int(b["compute_infer"]["count"])
    return out


def run_clients(url: str, model: str, items: list[bytes], clients: int, name: str | None = None) -> LoadResult:
    """`clients` threads, each with its own HTTP client, share `items` (one image per request)."""
    require_extra("serve", "the serving load test")
    import tritonclient.http as http

    before = _batch_stats(url, model)
    latencies = np.zeros(len(items))
    exited = np.zeros(len(items), bool)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        c = http.InferenceServerClient(url)
        for i in range(worker, len(items), clients):
            inp = http.InferInput("image", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[items[i]]], dtype=np.object_))
            t = time.perf_counter()
            try:
                result = c.infer(model, [inp], outputs=[http.InferRequestedOutput("exited_early")])
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(exc)
                continue
            latencies[i] = time.perf_counter() - t
            exited[i] = bool(result.as_numpy("exited_early").ravel()[0])

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    after = _batch_stats(url, model)
    ok = latencies > 0
    formed = {b: n - before.get(b, 0) for b, n in after.items() if n - before.get(b, 0) > 0}
    return LoadResult(name=name or model, clients=clients, seconds=seconds, latencies_ms=latencies[ok] * 1e3,
                      exited=exited[ok], batch_sizes=formed, errors=len(errors))
