//! The manifests of `examples/kubernetes/gateway-api/` stay valid: every
//! YAML document parses, has the kind and apiVersion it should and the
//! fields those kinds require, the objects name each other consistently
//! (class, Gateway, route, Services, the gates' URLs), and teal's RBAC
//! grants exactly the verbs teal needs of the Gateway API, no more.

use std::collections::{BTreeMap, BTreeSet};

use saphyr_parser::{Event, Parser};
use serde_json::Value;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/kubernetes/gateway-api/"
);

/// Every document of `file`, scalars as strings (enough to check fields).
fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{DIR}{file}"))
        .unwrap_or_else(|e| panic!("read {file}: {e}"));
    let mut parser = Parser::new_from_str(&text);
    let mut docs = Vec::new();
    // Open collections, innermost last; a mapping keeps its pending key.
    let mut stack: Vec<(Value, Option<String>)> = Vec::new();
    let mut finished: Option<Value> = None;
    while let Some(event) = parser.next_event() {
        let (event, _) = event.unwrap_or_else(|e| panic!("{file}: invalid YAML: {e:?}"));
        let value = match event {
            Event::DocumentEnd => {
                docs.extend(finished.take());
                continue;
            }
            Event::Scalar(text, ..) => Value::String(text.into_owned()),
            Event::SequenceStart(..) => {
                stack.push((Value::Array(Vec::new()), None));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push((Value::Object(serde_json::Map::new()), None));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => stack.pop().expect("balanced").0,
            Event::Alias(_) => panic!("{file}: the examples use no aliases"),
            _ => continue,
        };
        match stack.last_mut() {
            None => finished = Some(value),
            Some((Value::Array(items), _)) => items.push(value),
            Some((Value::Object(map), key)) => match key.take() {
                None => *key = Some(value.as_str().expect("a scalar key").to_owned()),
                Some(k) => {
                    assert!(map.insert(k.clone(), value).is_none(), "{file}: {k} twice");
                }
            },
            Some(_) => unreachable!("only collections are pushed"),
        }
    }
    assert!(!docs.is_empty(), "{file} holds no document");
    docs
}

fn text<'a>(v: &'a Value, path: &str) -> &'a str {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {path} in {v}"))
}

/// The one document of `kind` in `file`, checked for its apiVersion and a
/// name.
fn one(file: &str, kind: &str, api_version: &str) -> Value {
    let docs: Vec<Value> = documents(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(docs.len(), 1, "{file}: one {kind}");
    let doc = docs.into_iter().next().expect("one");
    assert_eq!(text(&doc, "apiVersion"), api_version, "{file}: {kind}");
    assert!(!text(&doc, "metadata.name").is_empty());
    doc
}

#[test]
fn the_gateway_api_objects_name_each_other_and_teal() {
    let v1 = "gateway.networking.k8s.io/v1";
    let class = one("gatewayclass.yaml", "GatewayClass", v1);
    assert_eq!(
        text(&class, "spec.controllerName"),
        "teal.dev/gateway-controller",
        "teal's default controller name"
    );
    let gateway = one("gateway.yaml", "Gateway", v1);
    assert_eq!(
        text(&gateway, "spec.gatewayClassName"),
        text(&class, "metadata.name")
    );
    let listeners = gateway["spec"]["listeners"].as_array().expect("listeners");
    assert!(
        listeners
            .iter()
            .all(|l| l["name"].is_string() && l["protocol"].is_string() && l["port"].is_string())
    );

    let route = one("httproute.yaml", "HTTPRoute", v1);
    let parent = &route["spec"]["parentRefs"][0];
    assert_eq!(text(parent, "kind"), "Gateway");
    assert_eq!(text(parent, "name"), text(&gateway, "metadata.name"));
    assert_eq!(
        text(&route, "metadata.namespace"),
        text(&gateway, "metadata.namespace")
    );
    let backends = route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .expect("weighted backendRefs");
    let weights: BTreeMap<&str, u32> = backends
        .iter()
        .map(|b| {
            let weight = text(b, "weight").parse().expect("a weight");
            assert!(b["port"].is_string(), "{b}: a Service backend needs a port");
            (text(b, "name"), weight)
        })
        .collect();
    assert_eq!(
        weights,
        BTreeMap::from([("web-blue", 100), ("web-green", 0)]),
        "the blue and green Services of ../apps.yaml"
    );
    let apps = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/kubernetes/apps.yaml"
    ))
    .expect("apps.yaml");
    for name in weights.keys() {
        assert!(
            apps.contains(&format!("name: {name}")),
            "apps.yaml has {name}"
        );
    }
}

/// Per (resource, namespaced), the verbs teal's RBAC grants on the Gateway
/// API group.
fn grants() -> BTreeMap<(String, bool), BTreeSet<String>> {
    let docs = documents("rbac.yaml");
    let mut granted: BTreeMap<(String, bool), BTreeSet<String>> = BTreeMap::new();
    for doc in &docs {
        let kind = text(doc, "kind");
        assert_eq!(text(doc, "apiVersion"), "rbac.authorization.k8s.io/v1");
        match kind {
            "Role" | "ClusterRole" => {
                let namespaced = kind == "Role";
                for rule in doc["rules"].as_array().expect("rules") {
                    assert_eq!(
                        rule["apiGroups"],
                        serde_json::json!(["gateway.networking.k8s.io"]),
                        "nothing outside the Gateway API here"
                    );
                    for resource in rule["resources"].as_array().expect("resources") {
                        let verbs = rule["verbs"].as_array().expect("verbs");
                        granted
                            .entry((resource.as_str().expect("text").to_owned(), namespaced))
                            .or_default()
                            .extend(verbs.iter().map(|v| v.as_str().expect("text").to_owned()));
                    }
                }
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role = text(doc, "roleRef.name");
                let role_kind = if kind == "RoleBinding" {
                    "Role"
                } else {
                    "ClusterRole"
                };
                assert_eq!(text(doc, "roleRef.kind"), role_kind);
                assert!(
                    docs.iter()
                        .any(|d| d["kind"] == role_kind && d["metadata"]["name"] == role),
                    "{kind} binds the {role_kind} {role} of the file"
                );
                let subject = &doc["subjects"][0];
                assert_eq!(text(subject, "kind"), "ServiceAccount");
                assert_eq!(text(subject, "name"), "teal", "../rbac.yaml's account");
                assert_eq!(text(subject, "namespace"), "shop");
            }
            other => panic!("rbac.yaml: unexpected {other}"),
        }
    }
    granted
}

#[test]
fn the_rbac_grants_exactly_what_teal_needs() {
    let set =
        |verbs: &[&str]| -> BTreeSet<String> { verbs.iter().map(|v| (*v).to_owned()).collect() };
    let read = set(&["get", "list", "watch"]);
    let want: BTreeMap<(String, bool), BTreeSet<String>> = BTreeMap::from([
        // Classes are cluster-scoped: a ClusterRole.
        (("gatewayclasses".to_owned(), false), read.clone()),
        (("gateways".to_owned(), true), read.clone()),
        (("httproutes".to_owned(), true), read),
        // The status subresource only: read afresh after a conflict,
        // patched with the resourceVersion read; the spec is never written.
        (
            ("httproutes/status".to_owned(), true),
            set(&["get", "patch"]),
        ),
    ]);
    assert_eq!(grants(), want);
}

#[test]
fn the_orchestrators_examples_point_at_the_gates() {
    let template = one(
        "argo-rollout.yaml",
        "AnalysisTemplate",
        "argoproj.io/v1alpha1",
    );
    let metric = &template["spec"]["metrics"][0];
    let url = text(metric, "provider.web.url");
    assert!(
        url.ends_with(":18001/v1/services/{{args.service}}"),
        "{url}"
    );
    let condition = text(metric, "successCondition");
    for field in ["result.confirmed == true", "result.confirmed_weights"] {
        assert!(condition.contains(field), "{condition}");
    }
    let rollout = one("argo-rollout.yaml", "Rollout", "argoproj.io/v1alpha1");
    let canary = &rollout["spec"]["strategy"]["canary"];
    assert_eq!(
        text(
            canary,
            "trafficRouting.plugins.argoproj-labs/gatewayAPI.httpRoute"
        ),
        "web",
        "the HTTPRoute of httproute.yaml"
    );
    let steps = canary["steps"].as_array().expect("steps");
    let analyses = steps.iter().filter(|s| s.get("analysis").is_some()).count();
    let weights = steps
        .iter()
        .filter(|s| s.get("setWeight").is_some())
        .count();
    assert_eq!(analyses, weights, "every weight is waited for");

    let flagger = one("flagger-canary.yaml", "Canary", "flagger.app/v1beta1");
    assert_eq!(text(&flagger, "spec.provider"), "gatewayapi:v1");
    let hooks = flagger["spec"]["analysis"]["webhooks"]
        .as_array()
        .expect("webhooks");
    let types: BTreeSet<&str> = hooks.iter().map(|h| text(h, "type")).collect();
    assert_eq!(
        types,
        BTreeSet::from(["confirm-traffic-increase", "confirm-promotion"])
    );
    for hook in hooks {
        assert!(
            text(hook, "url").ends_with(":18001/v1/gates/flagger"),
            "{hook}"
        );
        assert_eq!(text(hook, "metadata.service"), "web");
    }
    let admin = one("teal-admin.yaml", "Service", "v1");
    assert_eq!(text(&admin, "metadata.name"), "teal-admin");
    assert!(url.starts_with("http://teal-admin.shop.svc:"));
}
