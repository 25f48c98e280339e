"""Issue 24's acceptance check, as a user runs it: `sacvit-edge serve` on the bundled export,
200 images (the samples with random noise, PNG) from 8 tritonclient threads (4 HTTP, 4 gRPC)
compared with EdgeClassifier's answers, Triton's metrics (executions vs requests), a corrupt
file then a good one, SIGTERM. Ports 18400-18402 on loopback; writes nothing.

    python -m venv /tmp/v && /tmp/v/bin/pip install '.[serve]' && /tmp/v/bin/python scripts/serve_check.py
"""
import re, signal, subprocess, sys, threading, time, urllib.request
from pathlib import Path
import numpy as np
import tritonclient.http as http
import tritonclient.grpc as grpc
import sacvit_edge
from sacvit_edge import EdgeClassifier

export = Path(sacvit_edge.__file__).parent / "assets" / "sacvit_tiny_112"
samples = sorted((Path(sacvit_edge.__file__).parent / "assets" / "samples").glob("*.png"))
t0 = time.monotonic()
cli = Path(sys.executable).parent / "sacvit-edge"
proc = subprocess.Popen([str(cli), "serve", str(export), "--http-port", "18400", "--grpc-port", "18401", "--metrics-port", "18402", "--address", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
c = http.InferenceServerClient("127.0.0.1:18400")
while True:
    try:
        if c.is_server_ready(): break
    except Exception: pass
    if proc.poll() is not None or time.monotonic() - t0 > 60:
        proc.kill()
        sys.exit(f"serve did not become ready within 60 s:\n{proc.communicate()[0]}")
    time.sleep(0.05)
print(f"ready {time.monotonic() - t0:.2f} s after `sacvit-edge serve` started")
# 200 images: the samples and random crops/jitters of them (unseen variations), encoded as PNG
import io
from PIL import Image
rng = np.random.default_rng(5)
items = []
for i in range(200):
    img = np.asarray(Image.open(samples[i % 10]).convert("RGB")).astype(np.int16)
    img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO(); Image.fromarray(img).save(buf, format="PNG"); items.append(buf.getvalue())
clf = EdgeClassifier(export, backend="onnxruntime")
want = clf.predict_batch(items)
def metric(name):
    text = urllib.request.urlopen("http://127.0.0.1:18402/metrics").read().decode()
    return sum(float(v) for v in re.findall(rf'^{name}{{[^}}]*model="sacvit"[^}}]*}} (\S+)$', text, re.M))
r0, e0 = metric("nv_inference_request_success"), metric("nv_inference_exec_count")
got = {}
def worker(w):
    cl = http.InferenceServerClient("127.0.0.1:18400") if w % 2 == 0 else grpc.InferenceServerClient("127.0.0.1:18401")
    mod = http if w % 2 == 0 else grpc
    for i in range(w, 200, 8):
        inp = mod.InferInput("image", [1, 1], "BYTES"); inp.set_data_from_numpy(np.array([[items[i]]], dtype=object))
        got[i] = cl.infer("sacvit", [inp])
ts = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
t = time.monotonic(); [x.start() for x in ts]; [x.join() for x in ts]; dt = time.monotonic() - t
same_class = sum(int(got[i].as_numpy("class_id")[0, 0]) == want[i].class_id for i in range(200))
same_exit = sum(bool(got[i].as_numpy("exited_early")[0, 0]) == want[i].exited_early for i in range(200))
dconf = max(abs(float(got[i].as_numpy("confidence")[0, 0]) - want[i].confidence) for i in range(200))
print(f"200 images from 8 threads (4 HTTP, 4 gRPC) in {dt:.2f} s: class equal {same_class}/200, exit equal {same_exit}/200, "
      f"max |confidence diff| {dconf:.2e}, exit rate {np.mean([w.exited_early for w in want]):.3f}")
print(f"metrics: requests {metric('nv_inference_request_success') - r0:.0f}, executions {metric('nv_inference_exec_count') - e0:.0f}")
inp = http.InferInput("image", [1, 1], "BYTES"); inp.set_data_from_numpy(np.array([[b"\x89PNG\r\n\x1a\ncorrupt"]], dtype=object))
try:
    c.infer("sacvit", [inp]); print("corrupt: NO ERROR")
except Exception as e:
    print("corrupt file:", e)
inp = http.InferInput("image", [1, 1], "BYTES"); inp.set_data_from_numpy(np.array([[items[0]]], dtype=object))
print("next request: class", int(c.infer("sacvit", [inp]).as_numpy("class_id")[0, 0]), "want", want[0].class_id)
t = time.monotonic(); proc.send_signal(signal.SIGTERM); out, _ = proc.communicate(60)
print(f"SIGTERM -> exit code {proc.returncode} after {time.monotonic() - t:.1f} s")
print("torch imported by this check:", "torch" in sys.modules)
print(out)
