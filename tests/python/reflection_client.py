"""A gRPC client that knows nothing of tollgate's protos: it learns them by
server reflection, v1alpha (the version Python's grpcio-reflection speaks),
lists the services, and, given a request, calls Authorize with the
descriptors it fetched. Run by tests/reflection.rs.

    python3 reflection_client.py HOST:PORT [AUTHORIZE_REQUEST_JSON]

Prints one JSON object: {"services": [...], "authorize": {...} or absent}.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main():
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        out = {"services": sorted(db.get_services())}
        if len(sys.argv) > 2:
            pool = descriptor_pool.DescriptorPool(db)
            method = pool.FindServiceByName("tollgate.v1.Authorizer").FindMethodByName("Authorize")
            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            call = channel.unary_unary(
                "/tollgate.v1.Authorizer/Authorize",
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            request = json_format.Parse(sys.argv[2], request_class())
            response = call(request, timeout=10)
            out["authorize"] = json_format.MessageToDict(response, preserving_proto_field_name=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
