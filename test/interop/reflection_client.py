#!/usr/bin/python3
"""A client that knows nothing of ctmapd but what server reflection tells it.

Debian's grpcio and the reference protobuf implementation (python3-protobuf, its C++
descriptor pool, which validates every descriptor as protoc does). Only the reflection
protocol itself is given, as a descriptor set protoc compiled from reflection.proto.

    reflection_client.py ADDRESS VERSION REFLECTION_DESCRIPTOR_SET SERVED_SET_OUT

Lists the services, fetches the file descriptors of each (file_containing_symbol), adds
them to a fresh descriptor pool (which refuses any the reference implementation would),
then builds grpc.health.v1.HealthCheckRequest from the pool alone and calls Health.Check.
Every served file descriptor is written to SERVED_SET_OUT as a FileDescriptorSet, for
protoc to check too.
Prints one JSON object: {"services", "files", "health"}; exits 1 with the error otherwise.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def message_class(pool, name):
    return message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName(name))


def main():
    address, version, reflection_set, served_out = sys.argv[1:5]
    package = "grpc.reflection." + version
    reflection_pool = descriptor_pool.DescriptorPool()
    fds = descriptor_pb2.FileDescriptorSet()
    with open(reflection_set, "rb") as f:
        fds.ParseFromString(f.read())
    for file in fds.file:
        reflection_pool.Add(file)
    Request = message_class(reflection_pool, package + ".ServerReflectionRequest")
    Response = message_class(reflection_pool, package + ".ServerReflectionResponse")

    channel = grpc.insecure_channel(address)
    info = channel.stream_stream(
        "/%s.ServerReflection/ServerReflectionInfo" % package,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=Response.FromString,
    )

    def ask(**fields):
        (response,) = list(info(iter([Request(**fields)]), timeout=10))
        if response.HasField("error_response"):
            raise RuntimeError("reflection error %d: %s" % (response.error_response.error_code, response.error_response.error_message))
        return response

    services = [s.name for s in ask(list_services="").list_services_response.service]
    protos = {}
    for service in services:
        for raw in ask(file_containing_symbol=service).file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            protos[proto.name] = proto

    served = descriptor_pb2.FileDescriptorSet()
    served.file.extend(protos[name] for name in sorted(protos))
    with open(served_out, "wb") as f:
        f.write(served.SerializeToString())

    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name in added:
            return
        for dep in protos[name].dependency:
            add(dep)
        pool.Add(protos[name])  # raises TypeError for a descriptor the reference refuses
        added.add(name)

    for name in sorted(protos):
        add(name)

    health = pool.FindServiceByName("grpc.health.v1.Health")
    check = health.FindMethodByName("Check")
    CheckRequest = message_factory.MessageFactory(pool).GetPrototype(check.input_type)
    CheckResponse = message_factory.MessageFactory(pool).GetPrototype(check.output_type)
    call = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=CheckResponse.FromString,
    )
    response = call(CheckRequest(service=""), timeout=10)
    status = check.output_type.fields_by_name["status"].enum_type.values_by_number[response.status].name
    print(json.dumps({"services": services, "files": sorted(protos), "health": status}))


if __name__ == "__main__":
    try:
        main()
    except Exception as err:  # the test prints what went wrong
        print("%s: %s" % (type(err).__name__, err), file=sys.stderr)
        sys.exit(1)
