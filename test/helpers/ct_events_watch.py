#!/usr/bin/python3
"""A CTEvents subscriber that is not ctmapd's own code: Debian's python3-grpcio and
python3-protobuf, with stubs protoc generated from proto/ctmap/v1/ctmap.proto.

Usage: ct_events_watch.py ADDRESS PB2_DIR [SECONDS]
Reads ctmap.v1.CTEvents/WatchBatched from ADDRESS ("unix:/path") and prints one JSON line
per event or lost notice, as the reference protobuf runtime decoded it; prints
{"ready": true} once the call is open, and exits 0 after SECONDS (default 30) or when the
server ends the stream.
"""
import json
import sys
import threading

sys.path.insert(0, sys.argv[2])
import grpc  # noqa: E402
from ctmap.v1 import ctmap_pb2  # noqa: E402


def main() -> int:
    address = sys.argv[1]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    channel = grpc.insecure_channel(address)
    watch = channel.unary_stream(
        "/ctmap.v1.CTEvents/WatchBatched",
        request_serializer=ctmap_pb2.WatchCtEventsRequest.SerializeToString,
        response_deserializer=ctmap_pb2.CtLifecycleEventBatch.FromString,
    )
    call = watch(ctmap_pb2.WatchCtEventsRequest())
    timer = threading.Timer(seconds, call.cancel)
    timer.start()
    print(json.dumps({"ready": True}), flush=True)
    try:
        for batch in call:
            for e in batch.events:
                if e.HasField("lost"):
                    out = {
                        "lost": e.lost.count,
                        "at": ctmap_pb2.CtEventLossPoint.Name(e.lost.at),
                        "family": ctmap_pb2.Family.Name(e.lost.family),
                    }
                else:
                    out = {
                        "kind": ctmap_pb2.CtEventKind.Name(e.kind),
                        "reason": ctmap_pb2.CtEventReason.Name(e.reason),
                        "family": ctmap_pb2.Family.Name(e.family),
                        "sequence": e.sequence,
                        "cluster_id": e.record.map.cluster_id,
                        "daddr": e.record.key.daddr,
                        "dport": e.record.key.dport,
                        "packets": e.record.entry.packets,
                    }
                print(json.dumps(out), flush=True)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.CANCELLED:
            print(json.dumps({"error": str(err.code()), "details": err.details()}), flush=True)
            return 1
    finally:
        timer.cancel()
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
