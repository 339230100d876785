# Load script for docs/BENCHMARKS.md ("Hostile clients"): N connections each send 4 MiB minus
# one byte of a 4 MiB OTLP/HTTP body and stall; prints the gateway's RSS. Args: HTTP port, N, gateway pid.
import socket, sys, time, os, threading
port=int(sys.argv[1]); n=int(sys.argv[2]); pid=int(sys.argv[3])
def rss():
    d={}
    for l in open(f"/proc/{pid}/status"):
        k,v=l.split(":",1); d[k]=v.strip()
    return d["VmRSS"], d["VmHWM"]
print("before", rss())
socks=[]
body=b"\x0a" * (4*1024*1024-1)
def one():
    s=socket.create_connection(("127.0.0.1",port))
    s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: %d\r\n\r\n" % (4*1024*1024))
    try:
        s.sendall(body)
    except Exception as e:
        pass
    socks.append(s)
ts=[threading.Thread(target=one) for _ in range(n)]
t=time.time()
for th in ts: th.start()
for th in ts: th.join(timeout=30)
time.sleep(2)
print("during", rss(), "after %.1fs"%(time.time()-t))
# a normal client meanwhile
import urllib.request
t=time.time()
try:
    r=urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=b"", headers={"Content-Type":"application/x-protobuf"}), timeout=10)
    print("normal client", r.status, "%.3fs"%(time.time()-t))
except Exception as e:
    print("normal client error", e, "%.3fs"%(time.time()-t))
for s in socks: s.close()
time.sleep(1)
print("end", rss())
