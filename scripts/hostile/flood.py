# Load scripts for docs/BENCHMARKS.md ("Hostile clients"): see there for how they are run.
# 200 concurrent complete ~4 MB OTLP/HTTP requests (protobuf or JSON); reports the gateway's
# peak RSS and the worst latency a normal client saw meanwhile.
import sys, time, threading, json, os, urllib.request
port=int(sys.argv[1]); n=int(sys.argv[2]); pid=int(sys.argv[3]); kind=sys.argv[4]
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from flood_body import proto_body
def json_body(target):
    spans=[]; size=0; i=0
    while size < target - 300:
        s={"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": "span-%08d"%i,
           "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000001000000"}
        spans.append(s); size += len(json.dumps(s))+1; i+=1
    return json.dumps({"resourceSpans":[{"scopeSpans":[{"spans":spans}]}]}).encode(), i
body, items = (proto_body if kind=="proto" else json_body)(4*1024*1024 - (4096 if kind=="proto" else 120000))
ctype = "application/x-protobuf" if kind=="proto" else "application/json"
print(kind, len(body), "bytes,", items, "spans per request")
def rss():
    d={}
    for l in open(f"/proc/{pid}/status"):
        k,v=l.split(":",1); d[k]=v.strip()
    return int(d["VmRSS"].split()[0])//1024, int(d["VmHWM"].split()[0])//1024
print("before RSS/peak MiB", rss())
codes={}
lock=threading.Lock()
def one():
    try:
        r=urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=body, headers={"Content-Type":ctype}), timeout=60)
        c=r.status
    except urllib.error.HTTPError as e: c=e.code
    except Exception as e: c=type(e).__name__
    with lock: codes[c]=codes.get(c,0)+1
stop=False; worst=[0.0]; normal=[0]
small, _ = (proto_body if kind=="proto" else json_body)(2000)
def probe():
    while not stop:
        t=time.time()
        try:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=small, headers={"Content-Type":ctype}), timeout=10)
        except Exception as e:
            pass
        worst[0]=max(worst[0], time.time()-t); normal[0]+=1
        time.sleep(0.1)
p=threading.Thread(target=probe); p.start()
ts=[threading.Thread(target=one) for _ in range(n)]
t=time.time()
for th in ts: th.start()
for th in ts: th.join()
stop=True; p.join()
print("answers", codes, "in %.1fs" % (time.time()-t))
print("after RSS/peak MiB", rss())
print("normal client: %d requests, worst %.3fs" % (normal[0], worst[0]))
