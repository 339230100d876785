# Load script for docs/BENCHMARKS.md ("Hostile clients"): N TCP connections to the gateway
# that never send a byte, opened as fast as possible and held for S seconds; meanwhile a new
# client's HTTP export and /healthz are timed every second. Reports what the gateway holds
# (open connections, descriptors, RSS) and the worst latencies. Args: HTTP port, admin port,
# N, S, gateway pid.
import socket, sys, time, threading, resource, urllib.request, os
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from flood_body import proto_body
port, admin, n, hold, pid = (int(a) for a in sys.argv[1:6])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def held():
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
    rss = [int(status[k].split()[0]) for k in ("VmRSS", "VmHWM")]
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    open_ = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                if l.startswith("otelgate_receiver_open_connections") and 'server="otlp"' in l)
    return f"open {open_:.0f}, fds {fds}, RSS/peak {rss[0]>>10}/{rss[1]>>10} MiB"
print("before:", held())
socks = []; failed = [0]; lock = threading.Lock()
def opener(count):
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            with lock: socks.append(s)
        except OSError:
            with lock: failed[0] += 1
small, _ = proto_body(2000)
worst = {"export": 0.0, "healthz": 0.0}; errors = {"export": 0, "healthz": 0}; stop = False
def timed(name, fn):
    t = time.time()
    try: fn()
    except Exception: errors[name] += 1
    worst[name] = max(worst[name], time.time() - t)
def probe():
    while not stop:
        timed("export", lambda: urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/traces", data=small,
            headers={"Content-Type": "application/x-protobuf"}), timeout=15).read())
        timed("healthz", lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=15).read())
        time.sleep(1)
t = time.time()
threads = [threading.Thread(target=opener, args=(n // 50,)) for _ in range(50)]
for th in threads: th.start()
p = threading.Thread(target=probe); p.start()
for th in threads: th.join()
print(f"opened {len(socks)} (failed {failed[0]}) in {time.time()-t:.1f}s; gateway:", held())
time.sleep(hold)
print(f"after {hold}s held:", held())
stop = True; p.join()
print("new client during the attack: worst export %.3fs (%d failed), worst /healthz %.3fs (%d failed)"
      % (worst["export"], errors["export"], worst["healthz"], errors["healthz"]))
for s in socks: s.close()
time.sleep(2)
t = time.time()
urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=small,
    headers={"Content-Type": "application/x-protobuf"}), timeout=10).read()
print("after: export %.3fs;" % (time.time() - t), held())
