//! Two sessions over a tiny in-memory store: a cut mid-stream, live push, and repair.

use std::collections::{BTreeMap, VecDeque};

use super::*;

/// One collection of one replica: versions by dot (no supersession), vector, digest.
#[derive(Default, Clone)]
pub(super) struct Store {
    pub(super) versions: BTreeMap<Dot, Version>,
    pub(super) vv: VersionVector,
    pub(super) applied: BTreeMap<Dot, u32>,
}

impl Store {
    pub(super) fn write(&mut self, origin: &str, counter: u64) {
        self.write_of(&rid(origin), counter);
    }

    /// Writes counter `counter` of incarnation `origin`.
    fn write_of(&mut self, origin: &ReplicaId, counter: u64) {
        let mut v = version(origin.node_name(), counter);
        v.dot = Dot::new(origin.clone(), counter);
        v.key = format!("{origin}/{counter}");
        self.vv.add_dot(&v.dot);
        self.versions.insert(v.dot.clone(), v);
    }

    pub(super) fn digest(&self) -> Digest {
        let mut d = Digest::default();
        for v in self.versions.values() {
            d.toggle(&v.key, &v.dot, &ValueMeta::of(v.value.as_deref()));
        }
        d
    }

    /// Runs one action; returns the answer for the session.
    pub(super) fn run(&mut self, s: &mut Session, a: Action) {
        match a {
            Action::Load {
                collection,
                origin,
                after,
                through,
                max_versions,
                ..
            } => {
                let mut out: Vec<Version> = self
                    .versions
                    .values()
                    .filter(|v| v.dot.origin == origin)
                    .filter(|v| v.dot.counter > after && v.dot.counter <= through)
                    .cloned()
                    .collect();
                let mut scanned = through;
                if out.len() > max_versions {
                    out.truncate(max_versions);
                    scanned = out.last().map_or(through, |v| v.dot.counter);
                }
                s.handle_loaded(&collection, &origin, out, scanned);
            }
            Action::Apply { parts, repair } => {
                let mut done = Vec::new();
                for p in parts {
                    for v in p.versions {
                        if repair || !self.vv.covers(&v.dot) {
                            *self.applied.entry(v.dot.clone()).or_default() += 1;
                            self.versions.insert(v.dot.clone(), v);
                        }
                    }
                    self.vv.raise(&p.origin, p.through);
                    done.push((p.collection, p.origin, p.through));
                }
                for (collection, origin, through) in done {
                    s.handle_applied(&collection, &origin, through, self.vv.clone());
                }
            }
            Action::Digest { collection } => {
                s.handle_local_digest(&collection, self.digest(), self.vv.clone());
            }
            Action::TreeDigests {
                collection,
                level,
                parents,
            } => {
                let leaves = self.versions.values().map(|v| {
                    let e = Digest::element(&v.key, &v.dot, &ValueMeta::of(v.value.as_deref()));
                    (crate::tree::leaf_of(&v.key), e)
                });
                let digests = crate::tree::child_digests(level, &parents, leaves);
                s.handle_tree_digests(&collection, level, &parents, digests);
            }
            Action::LoadLeaves {
                collection,
                leaves,
                after,
                max_versions,
                max_bytes,
            } => {
                let (versions, next) = crate::tree::select_leaves(
                    self.versions.values(),
                    &leaves,
                    after.as_ref(),
                    max_versions,
                    max_bytes,
                );
                s.handle_leaves_loaded(&collection, versions, next);
            }
        }
    }
}

/// A dialer and an acceptor, each with its store, and what is in flight between them.
pub(super) struct Pair {
    pub(super) s: [Session; 2],
    pub(super) store: [Store; 2],
    wire: [VecDeque<(StreamKind, Message)>; 2],
    pub(super) now: u64,
    /// Encoded bytes each side put on the wire, and the frames of each kind.
    pub(super) sent: [usize; 2],
    pub(super) kinds: BTreeMap<&'static str, usize>,
}

impl Pair {
    pub(super) fn new(store: [Store; 2], relay: [bool; 2]) -> Self {
        Self::new_at(store, relay, 0)
    }

    /// Like [`Pair::new`], the dialer speaking at most protocol `max` (a node of an older
    /// release), with batches of `batch` versions.
    pub(super) fn speaking(store: [Store; 2], relay: [bool; 2], max: u16, batch: usize) -> Self {
        let mut p = Self::new(store, relay);
        let nodes = ["spoke", "hub"];
        let roles = [Role::Dialer, Role::Acceptor];
        for i in 0..2 {
            let mut c = cfg(nodes[i], relay[i]);
            c.repair_interval_ms = 0;
            c.batch_max_versions = batch;
            if i == 0 {
                c.max_protocol = max;
            }
            p.s[i] = Session::new(
                roles[i],
                c,
                peer(nodes[1 - i], relay[1 - i]),
                vec![(COLL.into(), p.store[i].vv.clone())],
                0,
            );
        }
        p
    }

    /// Like [`Pair::new`], the sessions starting at time `now`.
    fn new_at(store: [Store; 2], relay: [bool; 2], now: u64) -> Self {
        Self::restored(store, relay, now, [Vec::new(), Vec::new()])
    }

    /// Like [`Pair::new_at`], each node knowing the earlier incarnations `past` of itself.
    fn restored(store: [Store; 2], relay: [bool; 2], now: u64, past: [Vec<ReplicaId>; 2]) -> Self {
        let nodes = ["spoke", "hub"];
        let mk = |i: usize, role| {
            let mut c = cfg(nodes[i], relay[i]);
            c.repair_interval_ms = 0;
            c.past_replicas = past[i].clone();
            Session::new(
                role,
                c,
                peer(nodes[1 - i], relay[1 - i]),
                vec![(COLL.into(), store[i].vv.clone())],
                now,
            )
        };
        Self {
            s: [mk(0, Role::Dialer), mk(1, Role::Acceptor)],
            store,
            wire: [VecDeque::new(), VecDeque::new()],
            now,
            sent: [0, 0],
            kinds: BTreeMap::new(),
        }
    }

    /// One round: every action run, every queued frame put on the wire, then at most `budget`
    /// frames delivered in each direction. Returns false when nothing moved.
    pub(super) fn step(&mut self, budget: usize) -> bool {
        let mut moved = false;
        for i in 0..2 {
            while let Some(a) = self.s[i].poll_action() {
                self.store[i].run(&mut self.s[i], a);
                moved = true;
            }
            while let Some(f) = self.s[i].poll_transmit() {
                self.sent[i] += crate::wire::encode_message(&f.1).map_or(0, |b| b.len());
                *self.kinds.entry(f.1.kind()).or_default() += 1;
                self.wire[i].push_back(f);
                moved = true;
            }
        }
        self.now += 1;
        for i in 0..2 {
            for _ in 0..budget {
                let Some((k, m)) = self.wire[i].pop_front() else {
                    break;
                };
                self.s[1 - i].handle_frame(k, m, self.now);
                moved = true;
            }
        }
        moved
    }

    pub(super) fn run(&mut self) {
        for _ in 0..100_000 {
            if !self.step(usize::MAX) {
                return;
            }
        }
        panic!("no quiescence");
    }
}

#[test]
fn a_cut_mid_batch_resumes_without_gaps_or_double_applies() {
    let mut hub = Store::default();
    for c in 1..=20 {
        hub.write("hub", c);
    }
    for cut_after in 1..12 {
        let mut p = Pair::new([Store::default(), hub.clone()], [false, true]);
        for _ in 0..cut_after {
            p.step(1);
        }
        // The connection drops: frames in flight are lost, sessions discarded.
        let applied_before = p.store[0].applied.clone();
        let mut q = Pair::new([p.store[0].clone(), p.store[1].clone()], [false, true]);
        q.run();
        let spoke = &q.store[0];
        assert_eq!(spoke.vv, hub.vv, "cut after {cut_after}");
        assert_eq!(spoke.versions, hub.versions, "cut after {cut_after}");
        assert!(spoke.applied.values().all(|n| *n == 1), "double apply");
        assert!(applied_before.len() < 20, "the cut happened mid-stream");
        assert!(!q.s[0].is_closed() && !q.s[1].is_closed());
        assert_eq!(q.s[1].status().collections[0].lag_versions, 0);
    }
}

#[test]
fn a_version_stamped_beyond_the_skew_bound_is_held_not_sent() {
    // Counter 2 was written while the spoke's clock ran hours fast: peers would refuse it.
    let future = 10_000_000;
    let mut spoke = Store::default();
    for c in 1..=3 {
        spoke.write("spoke", c);
    }
    if let Some(v) = spoke.versions.values_mut().find(|v| v.dot.counter == 2) {
        v.hlc.ms = future;
    }
    let mut p = Pair::new([spoke, Store::default()], [false, true]);
    p.run();
    assert!(!p.s[0].is_closed() && !p.s[1].is_closed());
    assert_eq!(p.store[1].vv.get(&rid("spoke")), 1, "held before counter 2");
    assert_eq!(p.store[1].versions.len(), 1);
    // Still held one second before the spoke's clock is within the bound, less the margin.
    let max_skew = SessionConfig::new("spoke", rid("spoke"), CLUSTER).max_clock_skew_ms;
    let window = max_skew - crate::sync::send::skew_margin_ms(max_skew);
    let mut early = Pair::new_at(
        [p.store[0].clone(), p.store[1].clone()],
        [false, true],
        future - window - 1_000,
    );
    early.run();
    assert_eq!(
        early.store[1].vv.get(&rid("spoke")),
        1,
        "held within the margin"
    );
    // Once it is, the rest follows.
    let mut q = Pair::new_at(
        [p.store[0].clone(), p.store[1].clone()],
        [false, true],
        future - window,
    );
    q.run();
    assert_eq!(q.store[1].vv.get(&rid("spoke")), 3);
    assert_eq!(q.store[1].versions, q.store[0].versions);
}

#[test]
fn a_relay_forgets_the_streams_it_has_nothing_in_flight_on() {
    // The hub holds 40 offices' versions; the spoke catches up on them all.
    let mut hub = Store::default();
    for o in 0..40 {
        for c in 1..=3 {
            hub.write(&format!("office-{o}"), c);
        }
    }
    let mut p = Pair::new([Store::default(), hub], [false, true]);
    p.run();
    assert_eq!(p.store[0].versions, p.store[1].versions);
    assert!(!p.s[0].is_closed() && !p.s[1].is_closed());
    // Everything sent is acknowledged: the hub keeps no stream for the 40 origins.
    assert_eq!(p.s[1].send_streams_held(), 0);
    // An origin that grows gets a stream again, which starts where the forgotten one
    // stopped: only the new versions go, each applied once.
    p.store[1].write("office-7", 4);
    p.store[1].write("office-7", 5);
    let vv = p.store[1].vv.clone();
    p.s[1].handle_local_vv(COLL, vv);
    let sent_before = p.s[1].status().versions_sent;
    p.run();
    assert_eq!(p.store[0].versions, p.store[1].versions);
    assert_eq!(p.s[1].status().versions_sent, sent_before + 2);
    assert!(p.store[0].applied.values().all(|n| *n == 1), "double apply");
    assert_eq!(p.s[1].send_streams_held(), 0);
    assert!(!p.s[0].is_closed() && !p.s[1].is_closed());
}

#[test]
fn live_push_and_no_echo_of_what_the_peer_sent() {
    let mut p = Pair::new([Store::default(), Store::default()], [false, true]);
    p.run();
    p.store[0].write("spoke", 1);
    p.store[0].write("spoke", 2);
    let vv = p.store[0].vv.clone();
    p.s[0].handle_local_vv(COLL, vv);
    p.run();
    assert_eq!(p.store[1].vv.get(&rid("spoke")), 2);
    // The hub now offers spoke's versions too, but the spoke sent them: no Load back.
    assert_eq!(p.s[1].status().versions_sent, 0);
    assert_eq!(p.s[0].status().versions_sent, 2);
    assert_eq!(p.s[0].status().collections[0].lag_versions, 0);
}

#[test]
fn a_spoke_gives_a_restored_hub_back_its_earlier_incarnation_and_nothing_else_of_its_node() {
    let old = ReplicaId::new("hub", 0).expect("id");
    let unknown = ReplicaId::new("hub", 9).expect("id");
    // The spoke holds what the hub's earlier incarnation wrote after the hub's backup (3..5),
    // and versions of an incarnation of the hub's node that the hub never was.
    let mut spoke = Store::default();
    for c in 1..=5 {
        spoke.write_of(&old, c);
    }
    spoke.write_of(&unknown, 1);
    spoke.write("spoke", 1);
    let mut hub = Store::default();
    for c in 1..=2 {
        hub.write_of(&old, c);
    }
    let mut p = Pair::restored([spoke, hub], [false, true], 0, [vec![], vec![old.clone()]]);
    p.run();
    assert_eq!(
        p.store[1].vv.get(&old),
        5,
        "the earlier incarnation came back"
    );
    for c in 3..=5 {
        assert!(p.store[1].versions.contains_key(&Dot::new(old.clone(), c)));
    }
    assert_eq!(p.store[1].vv.get(&rid("spoke")), 1);
    assert_eq!(
        p.store[1].vv.get(&unknown),
        0,
        "an unknown incarnation was taken"
    );
    assert!(drain_events(&mut p.s[1]).iter().any(|e| matches!(
        e,
        Event::Rejected { reason, .. } if reason.contains(&unknown.to_string())
    )));
    // Without the restore (no earlier incarnation known), the hub takes none of it.
    let mut spoke = Store::default();
    spoke.write_of(&old, 1);
    let mut p = Pair::new([spoke, Store::default()], [false, true]);
    p.run();
    assert_eq!(p.store[1].vv.get(&old), 0);
}

/// A signature check that takes every version (a node with `accept_unsigned`): only the
/// session's own rules refuse anything.
#[derive(Debug)]
struct AcceptAll;

impl crate::signing::SignatureCheck for AcceptAll {
    fn first_bad(&self, _: &[Version]) -> Option<crate::signing::SignatureRefusal> {
        None
    }
    fn generation(&self) -> u64 {
        0
    }
}

#[test]
fn an_office_cannot_add_an_unsigned_version_to_a_restored_hubs_earlier_incarnation() {
    let old = ReplicaId::new("hub", 0).expect("id");
    // A hostile office makes up versions 3..4 of the hub's earlier incarnation, unsigned.
    let mut spoke = Store::default();
    for c in 1..=4 {
        spoke.write_of(&old, c);
    }
    let mut hub = Store::default();
    for c in 1..=2 {
        hub.write_of(&old, c);
    }
    let mut p = Pair::restored(
        [spoke.clone(), hub.clone()],
        [false, true],
        0,
        [vec![], vec![old.clone()]],
    );
    p.s[1].set_signature_check(std::sync::Arc::new(AcceptAll));
    p.run();
    assert_eq!(p.store[1].vv.get(&old), 2, "an unsigned version was taken");
    assert!(drain_events(&mut p.s[1]).iter().any(|e| matches!(
        e,
        Event::Rejected { reason, .. } if reason.contains("carries no signature")
    )));
    // Carrying a signature (which the real keyring verifies against the hub's own key), they
    // are taken.
    for v in spoke.versions.values_mut() {
        v.signature = Some(vec![1]);
    }
    let mut p = Pair::restored([spoke, hub], [false, true], 0, [vec![], vec![old.clone()]]);
    p.s[1].set_signature_check(std::sync::Arc::new(AcceptAll));
    p.run();
    assert_eq!(p.store[1].vv.get(&old), 4);
}

#[test]
fn verify_repairs_a_divergence_at_equal_vectors() {
    let mut a = Store::default();
    for c in 1..=7 {
        a.write("hub", c);
    }
    let mut b = a.clone();
    // Lost without trace at the spoke: the vector still covers it.
    b.versions.remove(&Dot::new(rid("hub"), 4));
    let mut p = Pair::new([b, a], [false, true]);
    p.run();
    p.s[0].request_verify(COLL);
    p.run();
    let events: Vec<Event> = drain_events(&mut p.s[0]);
    assert!(events.contains(&Event::DigestMismatch {
        collection: COLL.into()
    }));
    assert!(
        events.contains(&Event::Verified {
            collection: COLL.into(),
            outcome: VerifyOutcome::Repaired
        }),
        "{events:?}"
    );
    assert_eq!(p.store[0].versions, p.store[1].versions);
    assert!(drain_events(&mut p.s[1]).contains(&Event::DigestMismatch {
        collection: COLL.into()
    }));
    // Asked again: equal.
    p.s[1].request_verify(COLL);
    p.run();
    assert!(drain_events(&mut p.s[1]).contains(&Event::Verified {
        collection: COLL.into(),
        outcome: VerifyOutcome::Equal
    }));
}

#[test]
fn verify_at_different_vectors_does_nothing() {
    let mut a = Store::default();
    a.write("hub", 1);
    let mut p = Pair::new([Store::default(), a], [false, true]);
    // Verify before the data flows: the spoke's vector is behind.
    p.s[0].request_verify(COLL);
    p.step(usize::MAX);
    p.store[1].write("hub", 2); // not offered: the vectors keep differing
    p.run();
    let events = drain_events(&mut p.s[0]);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Verified {
                outcome: VerifyOutcome::VectorsDiffer | VerifyOutcome::Equal,
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(p.s[0].status().repairs, 0);
}

fn policy(entries: &[(&str, &str)]) -> std::sync::Arc<crate::policy::Policy> {
    let (p, errors) = crate::policy::Policy::from_entries(
        ["hub"],
        entries.iter().map(|(k, v)| (*k, v.as_bytes())),
    );
    assert!(errors.is_empty(), "{errors:?}");
    std::sync::Arc::new(p)
}

#[test]
fn a_collection_the_peer_may_not_read_is_never_sent_until_granted() {
    let mut hub = Store::default();
    for c in 1..=5 {
        hub.write("writer", c);
    }
    let mut pair = Pair::new([Store::default(), hub], [false, true]);
    let closed = policy(&[(
        "collections/situation",
        r#"{"read": ["writer"], "write": ["writer"]}"#,
    )]);
    for s in &mut pair.s {
        s.handle_policy(closed.clone());
    }
    pair.run();
    assert!(
        pair.store[0].versions.is_empty(),
        "nothing reached the spoke"
    );
    assert_eq!(pair.s[1].status().versions_sent, 0);
    assert!(pair.s[1].status().collections.is_empty(), "no lag reported");

    let open = policy(&[(
        "collections/situation",
        r#"{"read": ["writer", "spoke"], "write": ["writer"]}"#,
    )]);
    for s in &mut pair.s {
        s.handle_policy(open.clone());
    }
    // The acceptor streams once it has heard the established dialer: a heartbeat does it.
    pair.now += 1_500;
    let now = pair.now;
    for s in &mut pair.s {
        s.handle_timeout(now);
    }
    pair.run();
    assert_eq!(pair.store[0].vv.get(&rid("writer")), 5, "whole history");
    assert_eq!(pair.store[0].digest(), pair.store[1].digest());
}

#[test]
fn versions_of_an_origin_that_may_not_write_are_refused_until_granted() {
    let mut spoke = Store::default();
    for c in 1..=4 {
        spoke.write("spoke", c);
    }
    let mut pair = Pair::new([spoke, Store::default()], [false, true]);
    let ro = policy(&[(
        "collections/situation",
        r#"{"read": ["*"], "write": ["hub"]}"#,
    )]);
    for s in &mut pair.s {
        s.handle_policy(ro.clone());
    }
    pair.run();
    assert!(pair.store[1].versions.is_empty(), "the hub refused them");
    assert_eq!(pair.s[1].status().rejected, 4);
    let rejected: u64 = drain_events(&mut pair.s[1])
        .iter()
        .map(|e| match e {
            Event::Rejected { count, .. } => *count,
            _ => 0,
        })
        .sum();
    assert_eq!(rejected, 4);
    assert!(!pair.s[1].is_closed());

    // A grant makes the hub close the session so that the reconnect re-streams them.
    let rw = policy(&[(
        "collections/situation",
        r#"{"read": ["*"], "write": ["hub", "spoke"]}"#,
    )]);
    pair.s[1].handle_policy(rw.clone());
    assert_eq!(
        closed_code(&drain_events(&mut pair.s[1])),
        Some(ErrorCode::NotAuthorized)
    );
    let mut again = Pair::new(pair.store.clone(), [false, true]);
    for s in &mut again.s {
        s.handle_policy(rw.clone());
    }
    again.run();
    assert_eq!(again.store[1].vv.get(&rid("spoke")), 4);
}

#[test]
fn losing_read_access_closes_the_session() {
    let mut hub = Store::default();
    hub.write("writer", 1);
    let mut pair = Pair::new([Store::default(), hub], [false, true]);
    pair.run();
    assert_eq!(pair.store[0].vv.get(&rid("writer")), 1);
    pair.s[1].handle_policy(policy(&[(
        "collections/situation",
        r#"{"read": ["writer"], "write": ["*"]}"#,
    )]));
    assert_eq!(
        closed_code(&drain_events(&mut pair.s[1])),
        Some(ErrorCode::NotAuthorized)
    );
}

#[test]
fn policy_versions_only_from_a_relay_and_of_an_admin() {
    let policy_version = |origin: &str| Version {
        collection: crate::policy::POLICY_COLLECTION.into(),
        ..version(origin, 1)
    };
    // An office (not a relay) sending its own `_policy` version, even one named as admin.
    for (peer_node, relay) in [("spoke", false), ("hub", false)] {
        let mut s = established_acceptor(peer_node, relay);
        s.handle_policy(policy(&[]));
        let mut p = (*policy(&[])).clone();
        p = crate::policy::Policy::from_entries(
            p.admins().iter().cloned().chain([peer_node.to_owned()]),
            std::iter::empty(),
        )
        .0;
        s.handle_policy(std::sync::Arc::new(p));
        s.handle_frame(
            StreamKind::Bulk,
            Batch {
                collection: crate::policy::POLICY_COLLECTION.into(),
                origin: rid(peer_node),
                versions: vec![policy_version(peer_node)],
            }
            .into(),
            3,
        );
        assert_eq!(s.status().rejected, 1, "{peer_node} relay={relay}");
    }
    // A relay bringing an admin's `_policy` version is accepted.
    let mut s = established_acceptor("hub", true);
    s.handle_policy(policy(&[]));
    s.handle_frame(
        StreamKind::Bulk,
        Batch {
            collection: crate::policy::POLICY_COLLECTION.into(),
            origin: rid("hub"),
            versions: vec![policy_version("hub")],
        }
        .into(),
        3,
    );
    assert_eq!(s.status().rejected, 0);
}

#[test]
fn a_relay_sends_what_a_context_covers_before_the_version_that_covers_it() {
    // aa:1 supersedes bb:1 (its context covers it); streams are loaded in origin order, so
    // without causal sending aa:1 would reach the spoke first and be refused.
    let mut hub = Store::default();
    hub.write("bb", 1);
    hub.write("aa", 1);
    if let Some(v) = hub.versions.get_mut(&Dot::new(rid("aa"), 1)) {
        v.context = [(rid("bb"), 1)].into_iter().collect();
    }
    let mut p = Pair::new([Store::default(), hub.clone()], [false, true]);
    p.run();
    assert_eq!(p.s[0].status().rejected, 0, "nothing refused");
    assert_eq!(p.store[0].versions, hub.versions);
    assert_eq!(p.store[0].vv, hub.vv);
    assert!(!p.s[0].is_closed() && !p.s[1].is_closed());
}
