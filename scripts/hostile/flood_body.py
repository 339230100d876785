# The ~4 MB OTLP trace bodies of flood.py and flood_grpc.py (protobuf, encoded by hand).
import os, struct
def varint(v):
    out=b""
    while True:
        b=v&0x7f; v>>=7
        if v: out+=bytes([b|0x80])
        else: return out+bytes([b])
def ld(field, data): return varint((field<<3)|2)+varint(len(data))+data
def fixed64(field, v): return varint((field<<3)|1)+struct.pack("<Q", v)
def span(i):
    return (ld(1, os.urandom(16)) + ld(2, os.urandom(8)) + ld(5, b"span-%08d" % i) +
            fixed64(7, 1700000000000000000) + fixed64(8, 1700000000001000000))
def proto_body(target):
    spans=b""; i=0
    while len(spans) < target - 200:
        spans += ld(2, span(i)); i+=1
    scope=spans
    rs=ld(2, scope)
    return ld(1, rs), i
