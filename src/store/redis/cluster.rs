//! Decisions on a Redis Cluster, exact although a request's limits live in
//! several slots.
//!
//! A request's per-key limits (the plan's per-method throttle, throttle and
//! quota) and its usage share the hash tag `{k:KEY}`, so one slot (one
//! state hash and its history: `keys.rs`); the stage
//! throttle (`{s:API/STAGE}`) and the account throttle (`{acct}`) live in
//! others, maybe on other nodes. One script cannot touch them all, so a
//! request is decided in steps (docs/operations.md, "Redis Cluster"):
//!
//! 1. **take** from every group of limits other than the request's *main*
//!    one (the group holding its usage key, else its first group), in
//!    parallel;
//! 2. if all passed, **take** from the main group and count usage; if one was
//!    denied, ask the main group **dry** (check only): its limits come first
//!    in the order of docs/semantics.md, so if one of them denies too, it is
//!    the reason;
//! 3. **refund** what step 1 took when the request is denied after all: a
//!    bucket gets its tokens back (its level lowered by the cost).
//!
//! The guarantee: **nothing is ever over-admitted** — a request is admitted
//! only when every limit admitted it, and a limit's tokens are never given
//! back beyond what was taken. What it costs: while a request holds tokens
//! that are given back a moment later, another request may be refused (a
//! transient under-admission, bounded by the concurrent denials), and a
//! refund that cannot be delivered (the node died) loses those tokens for the
//! bucket's window. Quotas are only in the main group, which is never
//! refunded. Requests are batched per slot: one script call per slot and
//! step, in parallel across slots; with `--redis-wait-replicas`, each call
//! is followed by `WAIT` on its own node.

use std::collections::BTreeMap;

use futures::future::join_all;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};

use super::events::Crossed;
use super::link::Link;
use super::target::slot_of;
use super::{answers, classify, decide_cmd, refund_outcome, Answers, Op, Sub, WaitReplicas, DECIDE_CODE};
use crate::store::{Check, Limit, Refund, RefundOutcome, StoreError, Verdict};

/// One group of a request's limits: those in one slot.
struct Group {
    slot: u16,
    /// Indexes of the limits in the check.
    limits: Vec<usize>,
    /// Whether the request's usage is counted here.
    usage: bool,
}

/// A request's groups: the main one (index into `groups`) and the others.
struct Plan {
    groups: Vec<Group>,
    main: usize,
}

fn plan(c: &Check) -> Plan {
    let mut groups: Vec<Group> = Vec::new();
    for (i, l) in c.limits.iter().enumerate() {
        let slot = slot_of(&l.key);
        match groups.iter_mut().find(|g| g.slot == slot) {
            Some(g) => g.limits.push(i),
            None => groups.push(Group { slot, limits: vec![i], usage: false }),
        }
    }
    let main = match &c.usage {
        Some(u) => {
            let slot = slot_of(&u.state);
            match groups.iter().position(|g| g.slot == slot) {
                Some(i) => {
                    groups[i].usage = true;
                    i
                }
                None => {
                    groups.push(Group { slot, limits: Vec::new(), usage: true });
                    groups.len() - 1
                }
            }
        }
        None => 0,
    };
    Plan { groups, main }
}

/// A script call's request: which check, which group, what to do.
struct Ask {
    check: usize,
    group: usize,
    op: Op,
}

/// Whether an error means the cluster connection should be made anew: it
/// lost a node (a failover), or a node stopped answering.
fn needs_reconnect(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::ClusterConnectionNotFound)
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
}

/// Runs the calls of one step: `asks` grouped by slot, one call per slot, in
/// parallel. Returns one answer per ask, the quota alerts crossed (each
/// with the index of its check), and whether a call failed in a way that
/// calls for a new cluster connection.
#[allow(clippy::too_many_arguments)]
async fn step(
    conn: &ClusterConnection,
    link: &Link,
    checks: &[&Check],
    plans: &[Plan],
    asks: &[Ask],
    clock: &str,
    wait: Option<WaitReplicas>,
) -> (Vec<Result<Verdict, StoreError>>, Vec<Crossed>, bool) {
    let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, a) in asks.iter().enumerate() {
        by_slot.entry(plans[a.check].groups[a.group].slot).or_default().push(i);
    }
    let calls = by_slot.into_iter().map(|(slot, idx)| {
        let mut conn = conn.clone();
        async move {
            let subs: Vec<Sub<'_>> = idx
                .iter()
                .map(|&i| {
                    let a = &asks[i];
                    let c = checks[a.check];
                    let g = &plans[a.check].groups[a.group];
                    let limits: Vec<&Limit> = g.limits.iter().map(|&l| &c.limits[l]).collect();
                    let usage = if g.usage && a.op == Op::Take { c.usage.as_ref() } else { None };
                    Sub { limits, cost: c.cost, usage, op: a.op, marker: None }
                })
                .collect();
            let started = std::time::Instant::now();
            let r = slot_call(&mut conn, slot, &subs, clock, wait).await;
            let node = link.node_of(slot);
            metrics::histogram!("tollgate_redis_call_seconds", "node" => node.clone()).record(started.elapsed());
            if r.is_err() {
                metrics::counter!("tollgate_redis_errors_total", "node" => node).increment(1);
            }
            (idx, r)
        }
    });
    let mut out: Vec<Option<Result<Verdict, StoreError>>> = (0..asks.len()).map(|_| None).collect();
    let mut reconnect = false;
    let mut crossings = Vec::new();
    for (idx, result) in join_all(calls).await {
        match result {
            Ok((vs, crossed)) => {
                for c in crossed {
                    if let Some(&i) = idx.get(c.request) {
                        crossings.push(Crossed { request: asks[i].check, ..c });
                    }
                }
                for (i, v) in idx.into_iter().zip(vs) {
                    out[i] = Some(v);
                }
            }
            Err(e) => {
                reconnect |= needs_reconnect(&e);
                let e = classify(e);
                for i in idx {
                    out[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    let out = out.into_iter().map(|v| v.unwrap_or_else(|| Err(StoreError::Internal("no answer".into())))).collect();
    (out, crossings, reconnect)
}

/// One script call on the primary of `slot`, with `WAIT` after it when asked.
///
/// Every refusal handled here means the script did not run, so sending it
/// again charges nothing twice: NOSCRIPT (the script is loaded on that node
/// first); ASK, while the slot migrates and the key has already moved (sent
/// to the node named, after `ASKING`: the cluster client follows ASK for
/// single commands but not for a pipeline routed to a node); TRYAGAIN and
/// MOVED (sent again after a moment, to the slot's owner as now known). The
/// caller's deadline bounds the attempts.
async fn slot_call(
    conn: &mut ClusterConnection,
    slot: u16,
    subs: &[Sub<'_>],
    clock: &str,
    wait: Option<WaitReplicas>,
) -> redis::RedisResult<Answers> {
    let mut pipe = redis::pipe();
    pipe.add_command(decide_cmd(subs, clock, None));
    if let Some(w) = wait {
        pipe.cmd("WAIT").arg(w.replicas).arg(w.timeout.as_millis() as u64);
    }
    let n = if wait.is_some() { 2 } else { 1 };
    let mut route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
    let mut asking = false;
    for _ in 0..MAX_REDIRECTS {
        let sent = if asking {
            let mut p = redis::pipe();
            p.cmd("ASKING");
            for c in pipe.cmd_iter() {
                p.add_command(c.clone());
            }
            conn.route_pipeline(p, 1, n, route.clone()).await
        } else {
            conn.route_pipeline(pipe.clone(), 0, n, route.clone()).await
        };
        // A refusal comes back either as the pipeline's error or as its
        // first value, depending on the connection: both are handled alike.
        let e = match sent.and_then(|sent| answers(subs.len(), sent, wait)) {
            Err(e) => e,
            ok => return ok,
        };
        match e.kind() {
            redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(DECIDE_CODE.as_str());
                conn.route_command(load, redis::cluster_routing::RoutingInfo::SingleNode(route.clone())).await?;
            }
            redis::ErrorKind::Server(redis::ServerErrorKind::Ask) => {
                let Some((host, port)) = e.redirect_node().and_then(|(addr, _)| addr.rsplit_once(':')) else {
                    return Err(e);
                };
                let Ok(port) = port.parse() else { return Err(e) };
                route = SingleNodeRoutingInfo::ByAddress { host: host.to_string(), port };
                asking = true;
            }
            redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain | redis::ServerErrorKind::Moved) => {
                tokio::time::sleep(REDIRECT_PAUSE).await;
                route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                asking = false;
            }
            _ => return Err(e),
        }
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
        "the slot kept moving",
        format!("slot {slot}: {MAX_REDIRECTS} redirections"),
    )))
}

/// How many refusals (NOSCRIPT, ASK, TRYAGAIN, MOVED) one script call
/// follows before it gives up.
const MAX_REDIRECTS: usize = 20;
/// The pause before sending again after TRYAGAIN or MOVED.
const REDIRECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Decides `checks` on a cluster by the steps of the module docs; also
/// answers the quota alerts crossed (by check; the main group's take is the
/// one that counts the quota) and whether the cluster connection should be
/// made anew.
pub(super) async fn run(
    conn: ClusterConnection,
    link: &Link,
    checks: &[&Check],
    clock: &str,
    wait: Option<WaitReplicas>,
) -> (Vec<Result<Verdict, StoreError>>, Vec<Crossed>, bool) {
    let plans: Vec<Plan> = checks.iter().map(|c| plan(c)).collect();
    // 1. take from every group but the main one.
    let first: Vec<Ask> = plans
        .iter()
        .enumerate()
        .flat_map(|(c, p)| {
            (0..p.groups.len()).filter(move |g| *g != p.main).map(move |g| Ask { check: c, group: g, op: Op::Take })
        })
        .collect();
    let (got_first, _, r1) = step(&conn, link, checks, &plans, &first, clock, wait).await;
    // Per check: its step-1 answers, by group.
    let mut taken: Vec<Vec<(usize, Result<Verdict, StoreError>)>> = (0..checks.len()).map(|_| Vec::new()).collect();
    for (a, v) in first.iter().zip(got_first) {
        taken[a.check].push((a.group, v));
    }
    // 2. the main group: taken when every other group admitted, else dry.
    let second: Vec<Ask> = plans
        .iter()
        .enumerate()
        .map(|(c, p)| {
            let all_in = taken[c].iter().all(|(_, v)| v.as_ref().is_ok_and(|v| v.allowed));
            Ask { check: c, group: p.main, op: if all_in { Op::Take } else { Op::Dry } }
        })
        .collect();
    let (got_second, crossings, r2) = step(&conn, link, checks, &plans, &second, clock, wait).await;
    // 3. refunds, and the answers.
    let mut refunds = Vec::new();
    let mut out = Vec::with_capacity(checks.len());
    for (c, (ask, main)) in second.iter().zip(got_second).enumerate() {
        let admitted = ask.op == Op::Take && main.as_ref().is_ok_and(|v| v.allowed);
        if !admitted {
            for (g, v) in &taken[c] {
                if v.as_ref().is_ok_and(|v| v.allowed) {
                    refunds.push(Ask { check: c, group: *g, op: Op::Refund });
                }
            }
        }
        out.push(answer(checks[c], &plans[c], &taken[c], main, ask.op));
    }
    let mut r3 = false;
    if !refunds.is_empty() {
        let (got, _, r) = step(&conn, link, checks, &plans, &refunds, clock, None).await;
        r3 = r;
        for (a, r) in refunds.iter().zip(got) {
            if let Err(e) = r {
                metrics::counter!("tollgate_redis_refunds_lost_total").increment(1);
                tracing::warn!(error = %e, slot = plans[a.check].groups[a.group].slot, "a refund could not be given back; those tokens are lost for the bucket's window");
            }
        }
    }
    (out, crossings, r1 || r2 || r3)
}

/// One request's answer from its groups' answers.
fn answer(
    check: &Check,
    plan: &Plan,
    others: &[(usize, Result<Verdict, StoreError>)],
    main: Result<Verdict, StoreError>,
    main_op: Op,
) -> Result<Verdict, StoreError> {
    // Errors first: the request cannot be decided.
    if let Some(e) = others.iter().find_map(|(_, v)| v.as_ref().err()) {
        return Err(e.clone());
    }
    let main = main?;
    let global = |g: usize, v: &Verdict| Verdict { index: v.index.map(|i| plan.groups[g].limits[i]), ..*v };
    let main_v = global(plan.main, &main);
    if !main.allowed {
        // The main group's limits come first in the semantic order.
        return Ok(main_v);
    }
    if main_op == Op::Dry {
        // A limit of another group denied: the earliest of those.
        let denial = others
            .iter()
            .filter_map(|(g, v)| v.as_ref().ok().filter(|v| !v.allowed).map(|v| global(*g, v)))
            .min_by_key(|v| v.index);
        if let Some(d) = denial {
            return Ok(d);
        }
    }
    // Admitted: describe the limit with the least remaining, the earliest on
    // a tie, across the groups.
    let all = std::iter::once(main_v).chain(others.iter().filter_map(|(g, v)| v.as_ref().ok().map(|v| global(*g, v))));
    let best = all.filter(|v| v.index.is_some()).min_by_key(|v| (v.remaining, v.index));
    let _ = check;
    Ok(best.map(|b| Verdict { allowed: true, retry_after_ms: None, ..b }).unwrap_or(Verdict::UNLIMITED))
}

/// A refund on a cluster (docs/semantics.md, "Refunds"): the limits in the
/// slot of the refund's marker (the key's: its plan's throttles, quota and
/// usage) are given back with the marker in ONE script call, exact and
/// once; only when that gave back are the other slots' buckets (stage and
/// account throttles) given the cost back, one call per slot ("R", as a
/// take undone in step 3 above). Such a call that fails loses those
/// tokens for the bucket's window (logged, counted in
/// `tollgate_redis_refunds_lost_total`): never more is given back than was
/// taken.
pub(super) async fn refund(
    conn: ClusterConnection,
    r: &Refund,
    clock: &str,
    wait: Option<WaitReplicas>,
) -> Result<RefundOutcome, StoreError> {
    let main = slot_of(&r.marker);
    let mut others: BTreeMap<u16, Vec<&Limit>> = BTreeMap::new();
    let mut mine = Vec::new();
    for l in &r.limits {
        match slot_of(&l.key) {
            s if s == main => mine.push(l),
            s => others.entry(s).or_default().push(l),
        }
    }
    let sub = Sub::give_back(r, mine);
    let mut out = slot_call(&mut conn.clone(), main, &[sub], clock, wait).await.map_err(classify)?;
    let outcome = refund_outcome(out.0.pop().unwrap_or_else(|| Err(StoreError::Internal("no answer".into())))?)?;
    if !matches!(outcome, RefundOutcome::Refunded { .. }) {
        return Ok(outcome);
    }
    let calls = others.into_iter().map(|(slot, limits)| {
        let mut conn = conn.clone();
        async move {
            let sub = Sub { limits, cost: r.cost, usage: None, op: Op::Refund, marker: None };
            (slot, slot_call(&mut conn, slot, &[sub], clock, None).await)
        }
    });
    for (slot, result) in join_all(calls).await {
        if let Err(e) = result {
            metrics::counter!("tollgate_redis_refunds_lost_total").increment(1);
            tracing::warn!(error = %e, slot, "a refund could not be given back to a shared throttle; those tokens are lost for the bucket's window");
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Throttle;
    use crate::store::keys::Keys;
    use crate::store::Rule;

    #[test]
    fn a_keyed_request_has_its_plan_limits_and_usage_in_one_group() {
        let k = Keys::default();
        let t = Rule::Bucket(Throttle { rate_limit: 1.0, burst_limit: 1 });
        let stage = crate::model::StageRef::parse("a/b").unwrap();
        let c = Check {
            limits: vec![
                Limit { key: k.state("key1", "p"), field: Some("b".into()), rule: t },
                Limit { key: k.stage_bucket(&stage, "/x/GET"), field: None, rule: t },
                Limit { key: k.account_bucket(), field: None, rule: t },
            ],
            cost: 1,
            usage: Some(k.usage("key1", "p")),
            lease: Default::default(),
        };
        let p = plan(&c);
        assert_eq!(p.groups.len(), 3);
        assert_eq!(p.groups[p.main].limits, vec![0]);
        assert!(p.groups[p.main].usage);
    }
}
