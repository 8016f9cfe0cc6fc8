"""Generated protobuf and gRPC code for package fedlora.v1 (scripts/gen_protos.sh)."""
