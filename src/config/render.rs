//! Envoy resources as Envoy's own JSON (and YAML), with no hand-written
//! field mappings.
//!
//! # Where the schema comes from
//!
//! `envoy-types` compiles a protobuf descriptor set of every type it
//! generates into its package (`src/generated/types.bin`, about 3.3 MB) but
//! does not export it. Copying it into this repository would add 3 MB that
//! goes stale whenever `envoy-types` is upgraded, so instead `build.rs`
//! asks Cargo where the resolved `envoy-types` package lives
//! (`cargo metadata --format-version 1 --offline`, the documented way to
//! find a dependency's sources, which works the same for registry,
//! vendored, git and path sources) and copies the file into `OUT_DIR`.
//! Here it is embedded with `include_bytes!` and loaded into a
//! `prost-reflect` [`DescriptorPool`] once, on first use. The descriptor
//! set always matches the `envoy-types` version that built our messages.
//!
//! # The JSON form
//!
//! Each resource is wrapped in a `google.protobuf.Any` and printed by
//! `prost-reflect`'s proto3 JSON serializer, so it carries its `@type`, and
//! nested `Any`s (the HTTP connection manager, the router, the HTTP/2
//! protocol options) are expanded too because their types are in the pool.
//! Fields use their proto names (`connect_timeout`, as in Envoy's docs and
//! `config_dump`), fields at their default value are left out, durations
//! print as `"1s"` and 64-bit integers as strings, all per proto3 JSON.

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

use super::translate::encoded_resources;
use crate::xds::snapshot::SnapshotInput;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

/// Why rendering failed. Only a mismatch between our messages and the
/// descriptor set can cause it, never the config.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The embedded descriptor set did not load.
    #[error("the envoy-types descriptor set does not load: {0}")]
    Descriptors(String),
    /// A type is missing from the descriptor set.
    #[error("type {0} is not in the envoy-types descriptor set")]
    UnknownType(String),
    /// A message did not decode or serialize.
    #[error("cannot render {name}: {reason}")]
    Message {
        /// The resource.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

fn pool() -> Result<&'static DescriptorPool, RenderError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| RenderError::Descriptors(e.clone()))
}

/// Renders an encoded message of type `full_name` as a JSON value.
pub fn message_to_json(full_name: &str, bytes: &[u8]) -> Result<Value, RenderError> {
    let pool = pool()?;
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| RenderError::UnknownType(full_name.to_owned()))?;
    let message = DynamicMessage::decode(desc, bytes).map_err(|e| RenderError::Message {
        name: full_name.to_owned(),
        reason: e.to_string(),
    })?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| RenderError::Message {
            name: full_name.to_owned(),
            reason: e.to_string(),
        })
}

fn type_name(kind: &str) -> &'static str {
    match kind {
        "cluster" => "envoy.config.cluster.v3.Cluster",
        "endpoints" => "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "listener" => "envoy.config.listener.v3.Listener",
        _ => "envoy.config.route.v3.RouteConfiguration",
    }
}

/// The document `teal render` prints:
///
/// ```json
/// { "version": "<config digest>",
///   "groups": { "<group>": [ { "@type": "...Cluster", ... }, ... ] } }
/// ```
///
/// Resources come in make-before-break order (clusters, endpoints,
/// listeners, routes), each kind by name. With `group` set, only that
/// group is included; `None` if there is no such group.
pub(crate) fn render_document(
    input: &SnapshotInput,
    version: &str,
    group: Option<&str>,
) -> Result<Option<Value>, RenderError> {
    if let Some(g) = group
        && !input.groups.contains_key(g)
    {
        return Ok(None);
    }
    let mut groups = Map::new();
    for (g, kind, name, bytes) in encoded_resources(input) {
        if group.is_some_and(|wanted| wanted != g) {
            continue;
        }
        let full_name = type_name(kind);
        let any = Any {
            type_url: format!("type.googleapis.com/{full_name}"),
            value: bytes,
        };
        let json =
            message_to_json("google.protobuf.Any", &any.encode_to_vec()).map_err(|e| match e {
                RenderError::Message { reason, .. } => RenderError::Message {
                    name: format!("{kind} {name:?} of group {g:?}"),
                    reason,
                },
                other => other,
            })?;
        if let Value::Array(list) = groups
            .entry(g.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            list.push(json);
        }
    }
    // Groups without any resource still show up, empty.
    for g in input.groups.keys() {
        if group.is_none_or(|wanted| wanted == g) && !groups.contains_key(g) {
            groups.insert(g.clone(), Value::Array(Vec::new()));
        }
    }
    let mut doc = Map::new();
    doc.insert("version".to_owned(), Value::String(version.to_owned()));
    doc.insert("groups".to_owned(), Value::Object(groups));
    Ok(Some(Value::Object(doc)))
}

/// Writes `value` as block-style YAML. String values are always double-quoted
/// (JSON string syntax is valid YAML), so nothing is mistaken for a number
/// or a boolean.
pub(crate) fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    yaml_value(value, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Keys print bare when they cannot be read as anything but a string.
fn yaml_key(key: &str) -> String {
    let plain = key
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        && !matches!(
            key.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        key.to_owned()
    } else {
        scalar(&Value::String(key.to_owned()))
    }
}

fn scalar(value: &Value) -> String {
    // Serializing a JSON scalar cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn yaml_value(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                out.push_str(&pad);
                out.push_str(&yaml_key(k));
                out.push(':');
                yaml_child(v, indent, out);
            }
        }
        Value::Array(list) if !list.is_empty() => {
            for v in list {
                out.push_str(&pad);
                out.push('-');
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        // The first key goes on the dash's line.
                        let mut nested = String::new();
                        yaml_value(v, indent + 2, &mut nested);
                        out.push(' ');
                        out.push_str(nested.trim_start());
                    }
                    _ => yaml_child(v, indent, out),
                }
            }
        }
        Value::Object(_) => {
            out.push_str(&pad);
            out.push_str("{}\n");
        }
        Value::Array(_) => {
            out.push_str(&pad);
            out.push_str("[]\n");
        }
        other => {
            out.push_str(&pad);
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

/// Writes what follows `key:` or `-`.
fn yaml_child(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml_value(value, indent + 2, out);
        }
        Value::Array(l) if !l.is_empty() => {
            out.push('\n');
            yaml_value(value, indent + 2, out);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}
