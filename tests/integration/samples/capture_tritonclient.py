"""Captures tritonclient-grpc-unavailable.log: real tritonclient output against a closed gRPC port, what
QAnything's LLM relay (llm-relay, modeling_qwen.py's stream client) meets when Triton is down.

    python3 -m venv /tmp/tc && /tmp/tc/bin/pip install "tritonclient[grpc]" numpy
    /tmp/tc/bin/python tests/integration/samples/capture_tritonclient.py \\
        > tests/integration/samples/tritonclient-grpc-unavailable.log 2>&1

(tritonclient 2.73.0, grpcio 1.85.3 when captured.) Not part of any test run: the log is committed.
"""

import queue
import socket

import numpy as np
import tritonclient.grpc as grpcclient

s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
errors: queue.Queue = queue.Queue()
with grpcclient.InferenceServerClient(f"0.0.0.0:{port}", verbose=False) as client:
    client.start_stream(callback=lambda result, error: errors.put(error))
    inp = grpcclient.InferInput("input_ids", [1, 1], "INT32")
    inp.set_data_from_numpy(np.zeros((1, 1), np.int32))
    client.async_stream_infer("base", [inp], request_id="rid_231221")
    print("stream callback error:", errors.get(timeout=30), flush=True)
    client.stop_stream()
    client.is_server_live()   # raises: the traceback is part of the sample
