//! The Gateway API kinds teal reads (`gateway.networking.k8s.io/v1`
//! `HTTPRoute`, `Gateway`, `GatewayClass`), hand-written with only the
//! fields teal uses. The `gateway-api` crate would bring its own `kube`
//! (an older one than teal's), and teal needs few fields.
//!
//! Every struct keeps what it does not name in `rest` (serde `flatten`
//! into a map), so an object read and written back, or a status entry of
//! another controller carried through teal's write, loses nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The API group of the three kinds.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// Their version.
pub const VERSION: &str = "v1";

/// Fields teal does not read, kept as they came.
pub type Rest = BTreeMap<String, Value>;

/// `HTTPRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// Name, namespace, `generation`, `resourceVersion`.
    pub metadata: ObjectMeta,
    /// What the route asks for.
    #[serde(default)]
    pub spec: HttpRouteSpec,
    /// What controllers say of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
    /// `apiVersion`, `kind` and anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// `HTTPRoute.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Where the route attaches.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Matches and where they go.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Hostnames and anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// A `parentRef`: a Gateway (the default kind) or, for a mesh (GAMMA), a
/// Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// API group; unset means `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind; unset means `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace; unset means the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The parent's name.
    pub name: String,
    /// `sectionName`, `port`: kept, compared, not interpreted.
    #[serde(flatten)]
    pub rest: Rest,
}

/// One rule of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// The weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Matches, filters and anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// A weighted backend: a Service unless `group`/`kind` say otherwise.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// API group; unset or empty means the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind; unset means `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The backend's name.
    pub name: String,
    /// Namespace; unset means the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Share of the rule's traffic; unset means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// `port`, filters and anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// `HTTPRoute.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// One entry per (parent, controller).
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// One entry of `status.parents`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent it is about.
    pub parent_ref: ParentRef,
    /// Who wrote it: only the controller named here writes the entry.
    pub controller_name: String,
    /// What that controller says.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// A `metav1.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs`, `teal.dev/Confirmed`...
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word.
    pub reason: String,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default)]
    pub last_transition_time: String,
    /// The route's generation this is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `Gateway`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// Its class, and anything else.
    #[serde(default)]
    pub spec: GatewaySpec,
    /// `apiVersion`, `kind`, status and anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// `Gateway.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The `GatewayClass` it belongs to.
    #[serde(default)]
    pub gateway_class_name: String,
    /// Listeners and anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// `GatewayClass` (cluster-scoped).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayClass {
    /// Its name.
    pub metadata: ObjectMeta,
    /// Which controller implements it.
    #[serde(default)]
    pub spec: GatewayClassSpec,
    /// `apiVersion`, `kind`, status and anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// `GatewayClass.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// The controller that implements the class: teal's when it is
    /// `--gateway-controller-name`.
    #[serde(default)]
    pub controller_name: String,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// The `kube::Resource` impls: static kinds of the Gateway API group.
macro_rules! resource {
    ($t:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $t {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

resource!(
    HttpRoute,
    "HTTPRoute",
    "httproutes",
    k8s_openapi::NamespaceResourceScope
);
resource!(
    Gateway,
    "Gateway",
    "gateways",
    k8s_openapi::NamespaceResourceScope
);
resource!(
    GatewayClass,
    "GatewayClass",
    "gatewayclasses",
    k8s_openapi::ClusterResourceScope
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let route = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop", "generation": 3},
            "spec": {
                "hostnames": ["web.example"],
                "parentRefs": [{"name": "public", "sectionName": "http"}],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": "web-blue", "port": 80, "weight": 90},
                                    {"name": "web-green", "port": 80, "weight": 10}]
                }]
            },
            "status": {"parents": [{
                "parentRef": {"name": "public"},
                "controllerName": "example.com/other",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
                                "observedGeneration": 3}],
                "vendorField": {"x": 1}
            }]}
        });
        let r: HttpRoute = serde_json::from_value(route.clone()).expect("an HTTPRoute");
        assert_eq!(r.spec.rules[0].backend_refs[1].weight, Some(10));
        assert_eq!(r.spec.parent_refs[0].kind, None);
        let back = serde_json::to_value(&r).expect("serialises");
        assert_eq!(back, route, "nothing lost, nothing added");
    }
}
