use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

fn reg(addr: &str) -> Registered {
    Registered {
        address: addr.parse().expect("test address"),
        weight: 1,
        zone: None,
        expires: None,
    }
}

fn addr(a: &str) -> SocketAddr {
    a.parse().expect("test address")
}

fn limits() -> EndpointLimits {
    EndpointLimits {
        max_fleet_endpoints: 3,
        max_ttl: Duration::from_secs(60),
        ..EndpointLimits::default()
    }
}

#[test]
fn addresses_no_fleet_means_are_refused_unless_allowed() {
    let mut limits = EndpointLimits {
        admin_addr: Some(addr("127.0.0.1:18001")),
        ..limits()
    };
    for (bad, why) in [
        ("169.254.169.254:80", AddressError::LinkLocal),
        ("[fe80::1]:80", AddressError::LinkLocal),
        ("[::ffff:169.254.169.254]:80", AddressError::LinkLocal),
        ("224.0.0.1:80", AddressError::Multicast),
        ("[ff02::1]:80", AddressError::Multicast),
        ("255.255.255.255:80", AddressError::Broadcast),
        ("127.0.0.1:18001", AddressError::TealAdmin),
        ("127.0.0.2:18001", AddressError::TealAdmin),
        ("[::1]:18001", AddressError::TealAdmin),
    ] {
        for request in [
            Request::Set(vec![reg(bad)]),
            Request::Add(vec![reg("10.0.0.1:80"), reg(bad)]),
        ] {
            let e = apply("green", &[], &request, at(0), &limits).expect_err(bad);
            assert_eq!(
                e,
                RegistrationError::Address {
                    address: addr(bad),
                    why
                },
                "{bad}"
            );
            assert!(
                e.to_string().contains("--allow-any-endpoint-address"),
                "{e}"
            );
        }
    }
    for fine in [
        "10.0.0.1:18001",
        "127.0.0.1:8080",
        "[2001:db8::1]:80",
        "169.255.0.1:80",
    ] {
        apply("green", &[], &Request::Set(vec![reg(fine)]), at(0), &limits).expect(fine);
    }
    // One registered before (or with the flag) can still go.
    let held = [reg("169.254.169.254:80")];
    let gone = apply(
        "green",
        &held,
        &Request::Remove(vec![addr("169.254.169.254:80")]),
        at(0),
        &limits,
    )
    .expect("removed");
    assert!(gone.is_empty());
    limits.allow_any_address = true;
    apply(
        "green",
        &[],
        &Request::Set(vec![reg("169.254.169.254:80"), reg("127.0.0.1:18001")]),
        at(0),
        &limits,
    )
    .expect("allowed");
}

fn run(current: &[Registered], request: Request) -> Result<Vec<Registered>, RegistrationError> {
    apply("green", current, &request, at(0), &limits())
}

fn addrs(list: &[Registered]) -> Vec<String> {
    list.iter().map(|r| r.address.to_string()).collect()
}

#[test]
fn set_replaces_add_upserts_remove_needs_presence() {
    let set = run(
        &[reg("10.0.0.9:80")],
        Request::Set(vec![reg("10.0.0.1:80"), reg("10.0.0.2:80")]),
    )
    .expect("set");
    assert_eq!(addrs(&set), ["10.0.0.1:80", "10.0.0.2:80"]);

    let mut heavier = reg("10.0.0.2:80");
    heavier.weight = 5;
    let added = run(&set, Request::Add(vec![heavier, reg("10.0.0.3:80")])).expect("add");
    assert_eq!(addrs(&added), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
    assert_eq!(
        added[1].weight, 5,
        "an endpoint already there is updated in place"
    );

    let err = run(&added, Request::Add(vec![reg("10.0.0.4:80")])).expect_err("over the limit");
    assert!(err.to_string().contains("--max-fleet-endpoints"), "{err}");

    let removed = run(&added, Request::Remove(vec![addr("10.0.0.1:80")])).expect("remove");
    assert_eq!(addrs(&removed), ["10.0.0.2:80", "10.0.0.3:80"]);
    let err = run(&removed, Request::Remove(vec![addr("10.0.0.1:80")])).expect_err("absent");
    assert!(
        matches!(err, RegistrationError::NotRegistered { .. }),
        "{err:?}"
    );
    // Deregistering what is not there is fine (an instance stopping twice).
    let same = run(&removed, Request::Deregister(vec![addr("10.0.0.1:80")])).expect("deregister");
    assert_eq!(same, removed);
}

#[test]
fn requests_are_checked_whole() {
    let err = run(
        &[],
        Request::Set(vec![reg("10.0.0.1:80"), reg("10.0.0.1:80")]),
    )
    .expect_err("repeat");
    assert_eq!(err, RegistrationError::Repeated(addr("10.0.0.1:80")));
    let mut bad = reg("10.0.0.1:80");
    bad.weight = 0;
    assert!(matches!(
        run(&[], Request::Set(vec![bad])),
        Err(RegistrationError::Endpoints(
            EndpointSetError::Weight { .. }
        ))
    ));
    assert_eq!(
        run(&[], Request::Add(Vec::new())),
        Err(RegistrationError::Empty)
    );
    // An empty set is allowed: it empties the fleet.
    assert_eq!(
        run(&[reg("10.0.0.1:80")], Request::Set(Vec::new())),
        Ok(Vec::new())
    );
}

#[test]
fn registrations_carry_a_bounded_ttl_and_heartbeats_renew_them() {
    let ttl = Duration::from_secs(30);
    let r = run(
        &[],
        Request::Register {
            endpoints: vec![reg("10.0.0.1:80")],
            ttl,
        },
    )
    .expect("reg");
    assert_eq!(r[0].expires, Some(at(30)));
    for bad in [
        Duration::ZERO,
        Duration::from_millis(500),
        Duration::from_secs(61),
    ] {
        let err = run(
            &[],
            Request::Register {
                endpoints: vec![reg("10.0.0.1:80")],
                ttl: bad,
            },
        )
        .expect_err("out of bounds");
        assert!(
            matches!(err, RegistrationError::Ttl { .. }),
            "{bad:?}: {err:?}"
        );
    }
    let later = apply(
        "green",
        &r,
        &Request::Heartbeat {
            addresses: vec![addr("10.0.0.1:80")],
            ttl,
        },
        at(20),
        &limits(),
    )
    .expect("renewed");
    assert_eq!(later[0].expires, Some(at(50)));
    let err = run(
        &r,
        Request::Heartbeat {
            addresses: vec![addr("10.0.0.2:80")],
            ttl,
        },
    )
    .expect_err("not registered");
    assert!(err.to_string().contains("register it again"), "{err}");
    // A heartbeat does not put a TTL on an endpoint set without one.
    let pinned = run(
        &[reg("10.0.0.3:80")],
        Request::Heartbeat {
            addresses: vec![addr("10.0.0.3:80")],
            ttl,
        },
    )
    .expect("heartbeat");
    assert_eq!(pinned[0].expires, None);
}

#[test]
fn expiry_drops_what_ran_out_at_the_given_now_and_logs_it() {
    let mut regs = Registrations::default();
    let mut a = reg("10.0.0.1:80");
    a.expires = Some(at(10));
    let mut b = reg("10.0.0.2:80");
    b.expires = Some(at(20));
    regs.set("web", "green", vec![a, b, reg("10.0.0.3:80")]);
    assert_eq!(regs.next_expiry(), Some(at(10)));

    assert!(regs.expire(at(9)).is_empty(), "nothing ran out yet");
    assert_eq!(
        regs.expire(at(10)),
        vec![("web".to_owned(), "green".to_owned())]
    );
    assert_eq!(
        addrs(regs.get("web", "green")),
        ["10.0.0.2:80", "10.0.0.3:80"]
    );
    assert_eq!(regs.next_expiry(), Some(at(20)));
    let log = &regs.log["web"];
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].verb, EndpointVerb::Expire);
    assert_eq!(log[0].removed, vec![addr("10.0.0.1:80")]);

    regs.expire(at(100));
    assert_eq!(addrs(regs.get("web", "green")), ["10.0.0.3:80"]);
    assert_eq!(regs.next_expiry(), None);
    let overlay = regs.overlay();
    assert_eq!(overlay.get("web", "green").map(<[_]>::len), Some(1));
}

#[test]
fn the_log_is_bounded_and_lists_are_cut() {
    let mut regs = Registrations::default();
    let many: Vec<Registered> = (1..=40).map(|p| reg(&format!("10.0.0.1:{p}"))).collect();
    for i in 0..(LOG_LIMIT + 5) {
        let entry =
            EndpointChange::between("green", EndpointVerb::Set, "ci", at(i as u64), &[], &many);
        regs.record("web", entry);
    }
    let log = &regs.log["web"];
    assert_eq!(log.len(), LOG_LIMIT);
    assert_eq!(log[0].at, at(5), "the oldest went");
    assert_eq!(log[0].added.len(), LOG_ADDRESSES);
    assert_eq!(log[0].added_count, 40);
}

#[test]
fn registrations_round_trip_and_old_states_load() {
    let mut state = crate::state::PersistedState::default();
    let mut r = reg("[::1]:8080");
    r.zone = Some("z1".into());
    r.expires = Some(at(5));
    state.registered.set("web", "green", vec![r]);
    let json = serde_json::to_string(&state).expect("serializes");
    let back: crate::state::PersistedState = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, state);
    // A state file from before registrations has no such field.
    let old = serde_json::to_value(crate::state::PersistedState::default()).expect("value");
    assert!(
        old.get("registered").is_none(),
        "left out when empty: {old}"
    );
    let loaded: crate::state::PersistedState = serde_json::from_value(old).expect("old loads");
    assert!(loaded.registered.is_empty());
}
