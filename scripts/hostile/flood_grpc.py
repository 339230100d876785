# Load script for docs/BENCHMARKS.md ("Hostile clients"): like flood.py, over gRPC. N
# connections each send one ~4 MB OTLP trace export at the same moment (HTTP/2 with flow
# control, via the `h2` package: `pip install h2`); a normal client exports a small request
# every 100 ms meanwhile. Reports the answers, the gateway's RSS and peak, and the normal
# client's worst latency. Args: gRPC port, N, gateway pid.
import socket, sys, time, threading, struct
import h2.connection, h2.config, h2.events
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from flood_body import proto_body

port = int(sys.argv[1]); n = int(sys.argv[2]); pid = int(sys.argv[3])
PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

def rss():
    d = {}
    for l in open(f"/proc/{pid}/status"):
        k, v = l.split(":", 1); d[k] = v.strip()
    return int(d["VmRSS"].split()[0]) // 1024, int(d["VmHWM"].split()[0]) // 1024

def export(message, start=None, timeout=60):
    """One unary call on a fresh connection; returns the grpc-status (or an error name)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection(); s.sendall(conn.data_to_send())
    body = b"\x00" + struct.pack(">I", len(message)) + message
    if start: start.wait()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", PATH),
        (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"), ("te", "trailers")])
    s.sendall(conn.data_to_send())
    sent = 0; status = None; done = False
    while not done:
        while sent < len(body):
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0: break
            chunk = body[sent:sent + window]; sent += len(chunk)
            conn.send_data(sid, chunk, end_stream=sent == len(body))
            s.sendall(conn.data_to_send())
        data = s.recv(65536)
        if not data: return status or "closed"
        for event in conn.receive_data(data):
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                for k, v in event.headers:
                    if k == b"grpc-status": status = int(v)
            if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
            if isinstance(event, h2.events.ConnectionTerminated):
                return status if status is not None else "goaway"
        out = conn.data_to_send()
        if out: s.sendall(out)
    s.close()
    return status

big, spans = proto_body(4 * 1024 * 1024 - 4096)
small, _ = proto_body(2000)
print(f"grpc {len(big)} bytes, {spans} spans per request; before RSS/peak MiB {rss()}")
codes = {}; lock = threading.Lock(); start = threading.Event()
def one():
    try: c = export(big, start)
    except Exception as e: c = type(e).__name__
    with lock: codes[c] = codes.get(c, 0) + 1
stop = False; worst = [0.0]; normal = [0]
def probe():
    while not stop:
        t = time.time()
        try: export(small, timeout=10)
        except Exception: pass
        worst[0] = max(worst[0], time.time() - t); normal[0] += 1
        time.sleep(0.1)
threads = [threading.Thread(target=one) for _ in range(n)]
for th in threads: th.start()
time.sleep(1)
p = threading.Thread(target=probe); p.start()
t = time.time(); start.set()
for th in threads: th.join()
stop = True; p.join()
print("answers (grpc-status)", codes, "in %.1fs" % (time.time() - t))
print("after RSS/peak MiB", rss())
print("normal client: %d requests, worst %.3fs" % (normal[0], worst[0]))
