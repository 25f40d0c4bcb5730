use envoy_types::pb::envoy::config::core::v3::{Locality, Node, node::UserAgentVersionType};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use super::*;

fn limits(names: usize, bytes: usize) -> StreamLimits {
    StreamLimits {
        max_subscription_names: names,
        max_subscription_bytes: bytes,
        ..StreamLimits::default()
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("name-{i:04}")).collect()
}

#[test]
fn a_request_decodes_to_the_fields_teal_reads_and_drops_the_rest() {
    let metadata = Struct {
        fields: (0..100)
            .map(|i| {
                let value = Value {
                    kind: Some(Kind::StringValue("v".into())),
                };
                (format!("k{i}"), value)
            })
            .collect(),
    };
    let full = DiscoveryRequest {
        version_info: "3".into(),
        node: Some(Node {
            id: "edge-1".into(),
            cluster: "edge".into(),
            user_agent_name: "envoy".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion("1.40.0".into())),
            metadata: Some(metadata),
            locality: Some(Locality {
                region: "r".into(),
                ..Default::default()
            }),
            client_features: vec!["feature".into()],
            ..Default::default()
        }),
        resource_names: names(3),
        type_url: ResourceType::Cluster.type_url().into(),
        response_nonce: "7".into(),
        error_detail: Some(rpc::Status {
            code: 3,
            message: "bad".into(),
            details: vec![Default::default()],
        }),
        ..Default::default()
    };
    let got: DiscoveryRequest =
        decode_request(&full.encode_to_vec(), &StreamLimits::default()).expect("decodes");
    let mut want = full.clone();
    let node = want.node.as_mut().expect("node");
    node.metadata = None;
    node.locality = None;
    node.client_features.clear();
    want.error_detail.as_mut().expect("detail").details.clear();
    assert_eq!(got, want);
}

#[test]
fn a_delta_request_keeps_its_lists_and_versions() {
    let full = DeltaDiscoveryRequest {
        node: Some(Node {
            id: "sidecar-1".into(),
            ..Default::default()
        }),
        type_url: ResourceType::Endpoint.type_url().into(),
        resource_names_subscribe: names(4),
        resource_names_unsubscribe: names(2),
        initial_resource_versions: [("a".to_owned(), "v1".to_owned())].into(),
        response_nonce: "1".into(),
        ..Default::default()
    };
    let got: DeltaDiscoveryRequest =
        decode_request(&full.encode_to_vec(), &StreamLimits::default()).expect("decodes");
    assert_eq!(got, full);
}

#[test]
fn a_list_past_a_limit_is_refused_before_decoding_naming_the_limit() {
    let req = DiscoveryRequest {
        type_url: ResourceType::Cluster.type_url().into(),
        resource_names: names(11),
        ..Default::default()
    };
    let msg = req.encode_to_vec();
    let e = decode_request::<DiscoveryRequest>(&msg, &limits(10, 1000)).expect_err("over");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        e.message(),
        "the CDS request's resource_names has 11 names, over the subscription \
             names limit of 10 (--max-subscription-names)"
    );
    // 11 names of 9 bytes: 99 bytes.
    let e = decode_request::<DiscoveryRequest>(&msg, &limits(20, 98)).expect_err("over");
    assert!(e.message().contains("--max-subscription-bytes"), "{e:?}");
    assert!(decode_request::<DiscoveryRequest>(&msg, &limits(11, 99)).is_ok());

    // Delta: each list counts on its own, the unsubscribe list too,
    // and a version map by its names and versions.
    let delta = |sub: usize, unsub: usize, versions: usize| DeltaDiscoveryRequest {
        resource_names_subscribe: names(sub),
        resource_names_unsubscribe: names(unsub),
        initial_resource_versions: names(versions)
            .into_iter()
            .map(|n| (n, "v".to_owned()))
            .collect(),
        ..Default::default()
    };
    let check = |r: DeltaDiscoveryRequest| {
        decode_request::<DeltaDiscoveryRequest>(&r.encode_to_vec(), &limits(10, 1000))
    };
    assert!(check(delta(10, 10, 10)).is_ok());
    for (r, list) in [
        (delta(11, 0, 0), "resource_names_subscribe"),
        (delta(0, 11, 0), "resource_names_unsubscribe"),
        (delta(0, 0, 11), "initial_resource_versions"),
    ] {
        let e = check(r).expect_err("over");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains(list), "{e:?}");
    }
    // 10 entries of a 9-byte name and a 1-byte version: 100 bytes.
    let over = delta(0, 0, 10);
    let e = decode_request::<DeltaDiscoveryRequest>(&over.encode_to_vec(), &limits(10, 99))
        .expect_err("over");
    assert!(e.message().contains("has 100 bytes"), "{e:?}");
}

#[test]
fn malformed_requests_are_invalid_arguments() {
    for garbage in [
        &[0x0a, 0xc8, 0x01, 0xff][..], // a field longer than the message
        &[0x1a, 0x05, b'a'][..],       // a name longer than the message
        &[0x08][..],                   // a varint that never ends
        &[0x0b, 0x0c][..],             // a group
        &[0x00, 0x01][..],             // field number 0
        &[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ][..],
    ] {
        let e = decode_request::<DiscoveryRequest>(garbage, &StreamLimits::default())
            .expect_err("malformed");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{garbage:?}: {e:?}");
    }
}
