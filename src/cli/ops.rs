//! The commands that change traffic: `flip`, `shift`, `rollback`,
//! `retire`, `abort`, and `follow` to watch one already running. All but
//! `follow` need a token.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use crate::admin::convert::millis;
use crate::admin::pb;

use super::client::{self, Conn, EX_OK, EX_USAGE, Failure};

/// How `teal shift` was told to split traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShiftPlan {
    /// One step with these weights (`--weight`).
    Weights(Vec<(String, u32)>),
    /// The target fleet's weight at each step (`--steps`), towards `to`
    /// (or the fleet that is not live).
    Steps {
        /// Percentages, rising.
        percents: Vec<u32>,
        /// The fleet gaining traffic.
        to: Option<String>,
    },
}

/// Turns a plan into splits, given the service's fleets and live fleet.
/// Every fleet appears in every split, weights summing to 100.
pub fn resolve(
    plan: &ShiftPlan,
    fleets: &[String],
    live: &str,
) -> Result<Vec<BTreeMap<String, u32>>, String> {
    match plan {
        ShiftPlan::Weights(given) => {
            let mut split: BTreeMap<String, u32> = BTreeMap::new();
            for (fleet, w) in given {
                if !fleets.contains(fleet) {
                    return Err(format!(
                        "no fleet {fleet:?}; the fleets are {}",
                        fleets.join(", ")
                    ));
                }
                if split.insert(fleet.clone(), *w).is_some() {
                    return Err(format!("fleet {fleet:?} given twice"));
                }
            }
            let sum: u32 = split.values().sum();
            let rest: Vec<&String> = fleets.iter().filter(|f| !split.contains_key(*f)).collect();
            match (sum, rest.as_slice()) {
                (s, _) if s > 100 => return Err(format!("weights sum to {s}, more than 100")),
                (s, [only]) => {
                    split.insert((*only).clone(), 100 - s);
                }
                (100, others) => {
                    for f in others {
                        split.insert((*f).clone(), 0);
                    }
                }
                (s, _) => {
                    return Err(format!(
                        "weights sum to {s}, not 100; give every fleet's weight"
                    ));
                }
            }
            Ok(vec![split])
        }
        ShiftPlan::Steps { percents, to } => {
            let to = match to {
                Some(t) if fleets.contains(t) => t.clone(),
                Some(t) => {
                    return Err(format!(
                        "no fleet {t:?}; the fleets are {}",
                        fleets.join(", ")
                    ));
                }
                None => match fleets
                    .iter()
                    .filter(|f| *f != live)
                    .collect::<Vec<_>>()
                    .as_slice()
                {
                    [other] => (*other).clone(),
                    _ => {
                        return Err(
                            "more than two fleets: say which gains traffic with --to".into()
                        );
                    }
                },
            };
            let from = match fleets
                .iter()
                .filter(|f| **f != to)
                .collect::<Vec<_>>()
                .as_slice()
            {
                [one] => (*one).clone(),
                _ => return Err("--steps needs exactly two fleets; use --weight".into()),
            };
            Ok(percents
                .iter()
                .map(|p| BTreeMap::from([(to.clone(), *p), (from.clone(), 100 - p)]))
                .collect())
        }
    }
}

/// Follows an operation stream that `call` started.
async fn run(
    conn: &Conn,
    call: Result<tonic::Response<tonic::Streaming<pb::Progress>>, tonic::Status>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let stream = call.map_err(|e| conn.fail(&e))?.into_inner();
    Ok(client::follow(conn, stream, out, err).await)
}

/// `teal flip`.
pub async fn flip(
    conn: &mut Conn,
    r: pb::FlipRequest,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = conn.request(r);
    let call = conn.client.flip(req).await;
    run(conn, call, out, err).await
}

/// `teal shift`: reads the service's fleets, resolves the plan, shifts.
#[allow(clippy::too_many_arguments)]
pub async fn shift(
    conn: &mut Conn,
    service: String,
    plan: ShiftPlan,
    interval: Duration,
    timeout: Duration,
    skip_checks: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = conn.request(pb::StatusRequest {
        service: Some(service.clone()),
    });
    let status = conn
        .client
        .status(req)
        .await
        .map_err(|e| conn.fail(&e))?
        .into_inner();
    let svc = status
        .services
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| {
            Failure::new(
                client::EX_REFUSED,
                format!("refused: unknown service {service:?}"),
            )
        })?;
    let fleets: Vec<String> = svc
        .weights
        .as_ref()
        .map(|w| {
            w.weights
                .keys()
                .filter(|f| !svc.retired.contains(f))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    // The message can name the server's fleets: escaped like all its text.
    let steps = resolve(&plan, &fleets, &svc.live)
        .map_err(|e| Failure::new(EX_USAGE, crate::text::untrusted(&e).to_string()))?;
    let req = conn.request(pb::ShiftRequest {
        service,
        steps: steps
            .into_iter()
            .map(|weights| pb::Split { weights })
            .collect(),
        interval_ms: millis(interval),
        skip_checks,
        timeout_ms: millis(timeout),
    });
    let call = conn.client.shift(req).await;
    run(conn, call, out, err).await
}

/// `teal rollback`.
pub async fn rollback(
    conn: &mut Conn,
    r: pb::RollbackRequest,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = conn.request(r);
    let call = conn.client.rollback(req).await;
    run(conn, call, out, err).await
}

/// `teal retire`.
pub async fn retire(
    conn: &mut Conn,
    r: pb::RetireRequest,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = conn.request(r);
    let call = conn.client.retire(req).await;
    run(conn, call, out, err).await
}

/// `teal follow`.
pub async fn follow(
    conn: &mut Conn,
    id: u64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = conn.request(pb::FollowRequest { id });
    let call = conn.client.follow(req).await;
    run(conn, call, out, err).await
}

/// `teal abort`.
pub async fn abort(conn: &mut Conn, id: u64, out: &mut dyn Write) -> Result<u8, Failure> {
    let req = conn.request(pb::AbortRequest { id });
    conn.client.abort(req).await.map_err(|e| conn.fail(&e))?;
    let _ = writeln!(
        out,
        "asked operation #{id} to stop; follow it with: teal follow {id}"
    );
    Ok(EX_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleets() -> Vec<String> {
        vec!["blue".into(), "green".into()]
    }

    #[test]
    fn one_weight_gives_the_rest_to_the_other_fleet() {
        let plan = ShiftPlan::Weights(vec![("green".into(), 10)]);
        let steps = resolve(&plan, &fleets(), "blue").expect("valid");
        assert_eq!(
            steps,
            vec![BTreeMap::from([("blue".into(), 90), ("green".into(), 10)])]
        );
    }

    #[test]
    fn bad_weights_are_explained() {
        let r = |w: Vec<(&str, u32)>| {
            let plan = ShiftPlan::Weights(w.into_iter().map(|(f, w)| (f.to_owned(), w)).collect());
            resolve(&plan, &fleets(), "blue").expect_err("invalid")
        };
        assert!(r(vec![("green", 60), ("blue", 60)]).contains("sum to 120"));
        assert!(r(vec![("green", 10), ("blue", 10)]).contains("not 100"));
        assert!(r(vec![("red", 10)]).contains("no fleet \"red\""));
        assert!(r(vec![("green", 10), ("green", 10)]).contains("twice"));
    }

    #[test]
    fn steps_move_traffic_to_the_other_fleet() {
        let plan = ShiftPlan::Steps {
            percents: vec![10, 100],
            to: None,
        };
        let steps = resolve(&plan, &fleets(), "blue").expect("valid");
        assert_eq!(
            steps[0],
            BTreeMap::from([("blue".into(), 90), ("green".into(), 10)])
        );
        assert_eq!(
            steps[1],
            BTreeMap::from([("blue".into(), 0), ("green".into(), 100)])
        );
    }
}
