//! Golden files for `teal render`: `TEAL_BLESS=1 cargo test --test
//! config_render` rewrites them after an intended change.

use std::path::{Path, PathBuf};

use teal::cli::config_commands::{EX_OK, EX_USAGE, Format, render_command};
use teal::config::Limits;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/teal.yaml")
}

fn render(group: Option<&str>, format: Format) -> (u8, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = render_command(
        &example(),
        &Limits::default(),
        group,
        format,
        &mut out,
        &mut err,
    );
    (
        code,
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("TEAL_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with TEAL_BLESS=1)", path.display()));
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .map_or(expected.lines().count().min(actual.lines().count()), |i| i);
        panic!(
            "{} differs from the rendered output from line {} on:\n  expected: {:?}\n  actual:   {:?}\n\
             (run with TEAL_BLESS=1 to accept)",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line),
        );
    }
}

#[test]
fn render_edge_json() {
    let (code, out, err) = render(Some("edge"), Format::Json);
    assert_eq!(code, EX_OK, "{err}");
    golden("render_edge.json", &out);
}

#[test]
fn render_sidecar_yaml() {
    let (code, out, err) = render(Some("sidecar"), Format::Yaml);
    assert_eq!(code, EX_OK, "{err}");
    golden("render_sidecar.yaml", &out);
}

#[test]
fn render_all_groups_in_order() {
    let (code, out, _) = render(None, Format::Json);
    assert_eq!(code, EX_OK);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    let groups = doc["groups"].as_object().expect("groups");
    assert_eq!(groups.keys().collect::<Vec<_>>(), ["edge", "sidecar"]);
    let types: Vec<&str> = groups["edge"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["@type"].as_str().expect("@type"))
        .collect();
    let short: Vec<&str> = types
        .iter()
        .map(|t| t.rsplit('.').next().unwrap_or(t))
        .collect();
    assert_eq!(
        short,
        [
            "Cluster",
            "Cluster",
            "Cluster",
            "Cluster",
            "ClusterLoadAssignment",
            "ClusterLoadAssignment",
            "ClusterLoadAssignment",
            "ClusterLoadAssignment",
            "Listener",
            "RouteConfiguration"
        ]
    );
    // Nested Anys are expanded through the descriptor pool.
    assert!(out.contains("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"));
    assert!(out.contains("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"));
    assert!(
        out.contains("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    );
    // The YAML form is the same document.
    let (_, yaml, _) = render(None, Format::Yaml);
    assert!(
        yaml.starts_with("version: \""),
        "{}",
        &yaml[..40.min(yaml.len())]
    );
}

#[test]
fn render_unknown_group() {
    let (code, out, err) = render(Some("nope"), Format::Json);
    assert_eq!(code, EX_USAGE);
    assert!(out.is_empty());
    assert!(
        err.contains("no group \"nope\" (groups: edge, sidecar)"),
        "{err}"
    );
}

#[test]
fn render_grpc_listeners() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("teal.yaml");
    let text = std::fs::read_to_string(example()).expect("read the example")
        + "\n  clients:\n    listeners:\n      grpc: {kind: grpc, services: [web]}\n";
    std::fs::write(&path, text).expect("write the config");
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = render_command(
        &path,
        &Limits::default(),
        Some("clients"),
        Format::Json,
        &mut out,
        &mut err,
    );
    let err = String::from_utf8(err).expect("utf-8");
    assert_eq!(code, EX_OK, "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    let resources = doc["groups"]["clients"].as_array().expect("list");
    let of_type = |short: &str| -> Vec<&serde_json::Value> {
        resources
            .iter()
            .filter(|r| r["@type"].as_str().is_some_and(|t| t.ends_with(short)))
            .collect()
    };
    let listeners = of_type(".Listener");
    assert_eq!(listeners.len(), 1, "{doc:#}");
    let listener = listeners[0];
    assert_eq!(listener["name"], "web");
    assert!(listener.get("address").is_none(), "{listener:#}");
    let hcm = &listener["api_listener"]["api_listener"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "{listener:#}"
    );
    assert_eq!(hcm["rds"]["route_config_name"], "web", "{listener:#}");
    let routes = of_type(".RouteConfiguration");
    assert_eq!(routes.len(), 1, "{doc:#}");
    assert_eq!(routes[0]["name"], "web");
    assert_eq!(
        routes[0]["virtual_hosts"][0]["domains"],
        serde_json::json!(["web"])
    );
    assert_eq!(of_type(".Cluster").len(), 2, "{doc:#}");
}
