//! Compiles `proto/monitor.proto` in pure Rust (protox), so building Keel needs no `protoc`. Both
//! sides are generated: the sidecar serves `MonitorService`, `keel serve` is its client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/monitor.proto");
    let descriptors = protox::compile(["monitor.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
