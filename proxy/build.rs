//! Generates the SPIFFE Workload API's gRPC server and messages from
//! `proto/workload.proto`. protoc comes from Debian's `protobuf-compiler`,
//! `google/protobuf/struct.proto` from `libprotobuf-dev` (or set `PROTOC`
//! and `PROTOC_INCLUDE`).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_protos(&["proto/workload.proto"], &["proto"])
}
