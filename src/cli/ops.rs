//! The commands that change traffic: `flip`, `shift`, `rollback`,
//! `retire`, `abort`, and `follow` to watch one already running. All but
//! `follow` need a token.

use std::io::Write;

use crate::admin::pb;

use super::client::{Conn, EX_OK, Failure};
use super::progress;
use crate::text::untrusted;

/// Follows an operation stream that `call` started; `peers` are the
/// replicas to follow it on should the one running it stop leading
/// (`None`: learnt from the replica once the operation is known).
async fn run(
    conn: &Conn,
    call: Result<tonic::Response<tonic::Streaming<pb::Progress>>, tonic::Status>,
    peers: Option<Vec<String>>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let stream = call.map_err(|e| conn.fail(&e))?.into_inner();
    Ok(progress::follow(conn, stream, peers, out, err).await)
}

pub(crate) async fn flip(
    conn: &mut Conn,
    r: pb::FlipRequest,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    // Learnt before the change: the replica asked may be gone by the
    // time the operation needs following elsewhere.
    let peers = Some(progress::peers(conn, &r.service).await);
    let call = conn.client.flip(conn.signed(r.clone())).await;
    // A replica that does not lead names the leader: asked there once.
    if let Some(leader) = conn.leader_redirect(&call, err).await? {
        *conn = leader;
        let call = conn.client.flip(conn.signed(r)).await;
        return run(conn, call, peers, out, err).await;
    }
    run(conn, call, peers, out, err).await
}

/// `teal shift`: the server resolves the steps against the service's
/// current split.
pub(crate) async fn shift(
    conn: &mut Conn,
    r: pb::ShiftRequest,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    // Learnt before the change: the replica asked may be gone by the
    // time the operation needs following elsewhere.
    let peers = Some(progress::peers(conn, &r.service).await);
    let call = conn.client.shift(conn.signed(r.clone())).await;
    // A replica that does not lead names the leader: asked there once.
    if let Some(leader) = conn.leader_redirect(&call, err).await? {
        *conn = leader;
        let call = conn.client.shift(conn.signed(r)).await;
        return run(conn, call, peers, out, err).await;
    }
    run(conn, call, peers, out, err).await
}

pub(crate) async fn rollback(
    conn: &mut Conn,
    r: pb::RollbackRequest,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    // Learnt before the change: the replica asked may be gone by the
    // time the operation needs following elsewhere.
    let peers = Some(progress::peers(conn, &r.service).await);
    let call = conn.client.rollback(conn.signed(r.clone())).await;
    // A replica that does not lead names the leader: asked there once.
    if let Some(leader) = conn.leader_redirect(&call, err).await? {
        *conn = leader;
        let call = conn.client.rollback(conn.signed(r)).await;
        return run(conn, call, peers, out, err).await;
    }
    run(conn, call, peers, out, err).await
}

pub(crate) async fn retire(
    conn: &mut Conn,
    r: pb::RetireRequest,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    // Learnt before the change: the replica asked may be gone by the
    // time the operation needs following elsewhere.
    let peers = Some(progress::peers(conn, &r.service).await);
    let call = conn.client.retire(conn.signed(r.clone())).await;
    // A replica that does not lead names the leader: asked there once.
    if let Some(leader) = conn.leader_redirect(&call, err).await? {
        *conn = leader;
        let call = conn.client.retire(conn.signed(r)).await;
        return run(conn, call, peers, out, err).await;
    }
    run(conn, call, peers, out, err).await
}

pub(crate) async fn follow(
    conn: &mut Conn,
    id: u64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = conn.request(pb::FollowRequest { id });
    let call = conn.client.follow(req).await;
    run(conn, call, None, out, err).await
}

/// `teal cordon`: the leader saves it (a follower names the leader,
/// asked there once), so every replica stops waiting for the proxy.
pub(crate) async fn cordon(
    conn: &mut Conn,
    node_id: String,
    reason: String,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let shown = untrusted(&node_id).to_string();
    let r = pb::CordonRequest { node_id, reason };
    let call = conn.client.cordon(conn.signed(r.clone())).await;
    let call = match conn.leader_redirect(&call, err).await? {
        Some(leader) => {
            *conn = leader;
            conn.client.cordon(conn.signed(r)).await
        }
        None => call,
    };
    let r = call.map_err(|e| conn.fail(&e))?.into_inner();
    let what = if r.changed {
        "cordoned"
    } else {
        "was cordoned already (reason updated)"
    };
    let _ = writeln!(
        out,
        "{shown} {what}: operations no longer wait for it; undo with: teal uncordon {shown}"
    );
    Ok(EX_OK)
}

/// `teal uncordon`, asked of the leader as `teal cordon` is.
pub(crate) async fn uncordon(
    conn: &mut Conn,
    node_id: String,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let shown = untrusted(&node_id).to_string();
    let r = pb::UncordonRequest { node_id };
    let call = conn.client.uncordon(conn.signed(r.clone())).await;
    let call = match conn.leader_redirect(&call, err).await? {
        Some(leader) => {
            *conn = leader;
            conn.client.uncordon(conn.signed(r)).await
        }
        None => call,
    };
    let r = call.map_err(|e| conn.fail(&e))?.into_inner();
    let what = if r.changed {
        "uncordoned: operations wait for it again"
    } else {
        "was not cordoned"
    };
    let _ = writeln!(out, "{shown} {what}");
    Ok(EX_OK)
}

pub(crate) async fn abort(conn: &mut Conn, id: u64, out: &mut dyn Write) -> Result<u8, Failure> {
    let call = conn
        .client
        .abort(conn.signed(pb::AbortRequest { id }))
        .await;
    let call = match conn.leader_redirect(&call, &mut std::io::sink()).await? {
        Some(leader) => {
            *conn = leader;
            conn.client
                .abort(conn.signed(pb::AbortRequest { id }))
                .await
        }
        None => call,
    };
    call.map_err(|e| conn.fail(&e))?;
    let _ = writeln!(
        out,
        "asked operation #{id} to stop; follow it with: teal follow {id}"
    );
    Ok(EX_OK)
}
