//! Three jobs:
//!
//! 1. Compiles teal's admin API (`proto/teal/admin/v1/admin.proto`) into
//!    Rust with `protox` (a protobuf compiler in Rust, so no system
//!    `protoc` is needed) and `tonic-prost-build`; `src/admin/pb.rs`
//!    includes the result.
//! 2. Compiles the part of etcd's v3 API the etcd state store speaks
//!    (`proto/etcd/rpc.proto`) the same way, client side only;
//!    `src/state/etcd.rs` includes the result.
//! 3. Makes the protobuf descriptor set that `envoy-types` ships available to
//!    `teal::config::render` as `$OUT_DIR/envoy_types.bin`.
//!
//! `envoy-types` compiles its descriptor set (`src/generated/types.bin`)
//! into its package but does not export it. Rather than copy 3 MB into
//! this repository, we ask Cargo where the resolved `envoy-types` package
//! lives (`cargo metadata --offline --filter-platform $TARGET`, which works for registry, vendored,
//! git and path sources alike) and copy the file from there.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ADMIN_PROTO: &str = "proto/teal/admin/v1/admin.proto";
const ETCD_PROTO: &str = "proto/etcd/rpc.proto";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    compile_admin_proto();
    compile_etcd_proto();
    copy_envoy_descriptors();
}

fn compile_admin_proto() {
    println!("cargo::rerun-if-changed={ADMIN_PROTO}");
    let fds =
        protox::compile([ADMIN_PROTO], ["proto"]).unwrap_or_else(|e| panic!("{ADMIN_PROTO}: {e}"));
    tonic_prost_build::configure()
        // Splits print and compare in fleet order.
        .btree_map(".")
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generate the admin API from {ADMIN_PROTO}: {e}"));
}

fn compile_etcd_proto() {
    println!("cargo::rerun-if-changed={ETCD_PROTO}");
    let fds =
        protox::compile([ETCD_PROTO], ["proto"]).unwrap_or_else(|e| panic!("{ETCD_PROTO}: {e}"));
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generate the etcd client from {ETCD_PROTO}: {e}"));
}

fn copy_envoy_descriptors() {
    println!("cargo::rerun-if-changed=Cargo.lock");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Filtering to the target platform keeps Cargo from wanting the sources
    // of other platforms' dependencies. `--offline` first: it needs no
    // network once the lockfile's packages are downloaded. A plain
    // `cargo build` on a fresh machine has not downloaded the
    // dev-dependencies yet, which `cargo metadata` also wants, so then we
    // let it fetch them (exactly what `cargo test` would do).
    let target = env::var("TARGET").expect("TARGET");
    let metadata = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--locked"])
            .args(["--filter-platform", &target, "--manifest-path"])
            .arg(manifest_dir.join("Cargo.toml"));
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().expect("run cargo metadata")
    };
    let mut output = metadata(true);
    if !output.status.success() {
        output = metadata(false);
    }
    if !output.status.success() {
        panic!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages array");
    // The resolve graph picks exactly one envoy-types for this package.
    let wanted = metadata["resolve"]["nodes"]
        .as_array()
        .and_then(|nodes| {
            nodes.iter().find_map(|node| {
                let id = node["id"].as_str()?;
                let pkg = packages.iter().find(|p| p["id"].as_str() == Some(id))?;
                (pkg["name"].as_str() == Some("teal")).then_some(node)
            })
        })
        .and_then(|teal| {
            teal["deps"].as_array()?.iter().find_map(|d| {
                (d["name"].as_str() == Some("envoy_types")).then(|| d["pkg"].as_str())?
            })
        })
        .expect("teal depends on envoy-types");
    let package = packages
        .iter()
        .find(|p| p["id"].as_str() == Some(wanted))
        .expect("envoy-types package in metadata");
    let manifest = Path::new(package["manifest_path"].as_str().expect("manifest_path"));
    let source = manifest
        .parent()
        .expect("manifest has a directory")
        .join("src/generated/types.bin");
    println!("cargo::rerun-if-changed={}", source.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("envoy_types.bin");
    std::fs::copy(&source, &out)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", source.display(), out.display()));
}
