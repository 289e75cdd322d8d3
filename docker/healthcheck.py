"""Docker HEALTHCHECK: exit 0 when the server's grpc health service says SERVING.

usage: healthcheck.py [HOST:PORT]   (default 127.0.0.1:$VIDT_PORT, the port `vidt serve` reads
from the same variable; TLS when /run/secrets/tls.crt exists)
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CERT = os.environ.get("VIDT_TLS_CERT", "/run/secrets/tls.crt")


def main() -> int:
    address = (sys.argv[1] if len(sys.argv) > 1
               else f"127.0.0.1:{os.environ.get('VIDT_PORT', '50051')}")
    if os.path.exists(CERT):
        with open(CERT, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(address, creds)
    else:
        channel = grpc.insecure_channel(address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service="vidt.v1.PolicyService"),
                           timeout=2.0)
        return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
    except grpc.RpcError:
        return 1
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main())
