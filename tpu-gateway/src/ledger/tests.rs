//! The ledger's tests: examples for each rule, then a property test over random
//! interleavings of everything the owner can feed it, checked against a model after
//! every step. Time is passed in (a base instant plus durations); nothing sleeps.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use afterburner_quic::{DropReason, OutcomeKind};
use proptest::prelude::*;
use solana_sdk::{hash::Hash, signature::Signature};

use solana_sdk::pubkey::Pubkey;

use super::{
    Action, FirstDrop, FirstSendDone, Ledger, LedgerConfig, Lifetime, NewTx, State, Terminal, TxId,
};

const INTERVAL: Duration = Duration::from_secs(2);

/// Long expiry (150 slots of 400 ms: 60 s), so that only the tests about it see it.
fn config() -> LedgerConfig {
    LedgerConfig {
        retry_interval: INTERVAL,
        expiry_slots: 150,
        slot_duration: Duration::from_millis(400),
        max_send_records: 64,
        keep_ended: Duration::from_secs(60),
        max_ended: 100,
        ..LedgerConfig::default()
    }
}

fn new_tx(max_retries: Option<usize>, at: Instant) -> NewTx {
    NewTx {
        client: None,
        signature: Signature::new_unique(),
        wire: Arc::from(&b"wire"[..]),
        max_retries,
        received_at: at,
        lifetime: Lifetime::Blockhash(Hash::new_unique()),
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn tick(ledger: &mut Ledger, now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    ledger.tick(now, &mut out);
    out
}

fn sends(actions: &[Action]) -> Vec<(TxId, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { id, attempt, .. } => Some((*id, *attempt)),
            Action::Retired { .. } => None,
        })
        .collect()
}

fn retired(actions: &[Action]) -> Vec<(TxId, Terminal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Retired { id, terminal, .. } => Some((*id, *terminal)),
            Action::Send { .. } => None,
        })
        .collect()
}

fn first_sends(ledger: &mut Ledger) -> Vec<(TxId, FirstSendDone)> {
    let mut done: Vec<_> = ledger.take_first_sends().collect();
    done.sort_by_key(|(id, _)| *id);
    done
}

/// Accepts a transaction at `now`, ticks its first send out and reports it handed
/// to the engine for `targets`.
fn accept_and_send(
    ledger: &mut Ledger,
    max_retries: Option<usize>,
    targets: &[SocketAddr],
    now: Instant,
) -> (TxId, Signature) {
    let tx = new_tx(max_retries, now);
    let signature = tx.signature;
    let id = ledger.accept(tx, now);
    assert_eq!(sends(&tick(ledger, now)), vec![(id, 0)]);
    ledger.on_submitted(id, 0, targets, now);
    (id, signature)
}

// ---------------------------------------------------------------- examples

#[test]
fn ledger_accept_then_tick_sends_attempt_zero_at_once() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let tx = new_tx(None, base);
    let signature = tx.signature;
    let wire = tx.wire.clone();
    let id = ledger.accept(tx, base);
    assert_eq!(ledger.find(&signature).unwrap().state, State::Queued);
    assert!(ledger.in_flight_signatures().is_empty());

    let out = tick(&mut ledger, base);
    assert_eq!(
        out,
        vec![Action::Send {
            id,
            attempt: 0,
            wire
        }]
    );
    let record = ledger.get(id).unwrap();
    assert_eq!(record.state, State::InFlight);
    assert_eq!(record.accepted_at, base);
    assert_eq!(ledger.in_flight_signatures(), vec![signature]);
    // Nothing more is due until the retry interval passes.
    assert!(tick(&mut ledger, base + INTERVAL / 2).is_empty());
}

#[test]
fn ledger_first_send_with_one_sent_target_counts_once_as_sent() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (a, b) = (addr(1), addr(2));
    let (id, _) = accept_and_send(&mut ledger, None, &[a, b], base);
    assert!(first_sends(&mut ledger).is_empty());
    assert!(ledger.first_sends_pending());

    ledger.on_send_outcome(id, 0, a, OutcomeKind::Sent);
    // One target still to report: not settled yet.
    assert!(first_sends(&mut ledger).is_empty());
    assert_eq!(ledger.get(id).unwrap().first_send, None);

    ledger.on_send_outcome(id, 0, b, OutcomeKind::Dropped(DropReason::Backoff));
    assert_eq!(first_sends(&mut ledger), vec![(id, FirstSendDone::Sent)]);
    let record = ledger.get(id).unwrap();
    assert_eq!(record.first_send, Some(Ok(())));
    assert!(!ledger.first_sends_pending());
    let outcomes: Vec<_> = record
        .sends
        .iter()
        .map(|s| (s.attempt, s.target, s.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (0, Some(a), Some(OutcomeKind::Sent)),
            (0, Some(b), Some(OutcomeKind::Dropped(DropReason::Backoff))),
        ]
    );

    // Rebroadcasts and stray outcomes never count it again.
    assert_eq!(sends(&tick(&mut ledger, base + INTERVAL)), vec![(id, 1)]);
    ledger.on_submitted(id, 1, &[a], base + INTERVAL);
    ledger.on_send_outcome(id, 1, a, OutcomeKind::Dropped(DropReason::Evicted));
    ledger.on_send_outcome(id, 0, a, OutcomeKind::Sent);
    assert!(first_sends(&mut ledger).is_empty());
}

#[test]
fn ledger_first_send_dropped_then_sent_counts_as_sent() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (a, b) = (addr(1), addr(2));
    let (id, _) = accept_and_send(&mut ledger, None, &[a, b], base);
    ledger.on_send_outcome(id, 0, a, OutcomeKind::Dropped(DropReason::Backoff));
    assert!(first_sends(&mut ledger).is_empty());
    ledger.on_send_outcome(id, 0, b, OutcomeKind::Sent);
    assert_eq!(first_sends(&mut ledger), vec![(id, FirstSendDone::Sent)]);
}

#[test]
fn ledger_first_send_all_dropped_counts_the_last_reason() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (a, b) = (addr(1), addr(2));
    let (id, _) = accept_and_send(&mut ledger, None, &[a, b], base);
    ledger.on_send_outcome(id, 0, b, OutcomeKind::Dropped(DropReason::Backoff));
    assert!(first_sends(&mut ledger).is_empty());
    ledger.on_send_outcome(id, 0, a, OutcomeKind::Dropped(DropReason::HandshakeTimeout));
    let reason = FirstDrop::Engine(DropReason::HandshakeTimeout);
    assert_eq!(
        first_sends(&mut ledger),
        vec![(id, FirstSendDone::Dropped(reason))]
    );
    assert_eq!(ledger.get(id).unwrap().first_send, Some(Err(reason)));
    assert_eq!(reason.label(), DropReason::HandshakeTimeout.label());
    // A dropped first send is still rebroadcast.
    assert_eq!(sends(&tick(&mut ledger, base + INTERVAL)), vec![(id, 1)]);
}

#[test]
fn ledger_first_send_without_targets_drops_no_leader_at_once() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (id, _) = accept_and_send(&mut ledger, None, &[], base);
    assert_eq!(
        first_sends(&mut ledger),
        vec![(id, FirstSendDone::Dropped(FirstDrop::NoLeader))]
    );
    let record = ledger.get(id).unwrap();
    assert_eq!(record.first_send, Some(Err(FirstDrop::NoLeader)));
    assert_eq!(record.sends.len(), 1);
    assert_eq!(record.sends[0].target, None);
    assert_eq!(FirstDrop::NoLeader.label(), "no_leader");
    assert!(!ledger.first_sends_pending());
}

#[test]
fn ledger_rebroadcasts_every_retry_interval() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (id, _) = accept_and_send(&mut ledger, None, &[addr(1)], base);
    for n in 1..=5u32 {
        let due = base + INTERVAL * n;
        // Not before it is due...
        assert!(tick(&mut ledger, due - Duration::from_millis(1)).is_empty());
        // ...then once, with the next attempt number.
        assert_eq!(sends(&tick(&mut ledger, due)), vec![(id, n)]);
        assert!(tick(&mut ledger, due).is_empty());
        ledger.on_submitted(id, n, &[addr(1)], due);
    }
    assert_eq!(ledger.live(), 1);
    assert_eq!(ledger.get(id).unwrap().sends.len(), 6);
}

#[test]
fn ledger_late_tick_sends_once_and_reschedules_from_now() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (id, _) = accept_and_send(&mut ledger, None, &[addr(1)], base);
    // Three intervals late: one rebroadcast, not three.
    let late = base + INTERVAL * 3;
    assert_eq!(sends(&tick(&mut ledger, late)), vec![(id, 1)]);
    assert!(tick(&mut ledger, late + INTERVAL / 2).is_empty());
    assert_eq!(sends(&tick(&mut ledger, late + INTERVAL)), vec![(id, 2)]);
}

#[test]
fn ledger_max_retries_zero_only_sends_once() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (id, signature) = accept_and_send(&mut ledger, Some(0), &[addr(1)], base);
    assert!(tick(&mut ledger, base + INTERVAL / 2).is_empty());
    let out = tick(&mut ledger, base + INTERVAL);
    assert_eq!(
        out,
        vec![Action::Retired {
            id,
            terminal: Terminal::RetriesExhausted,
            age: INTERVAL
        }]
    );
    assert_eq!(
        ledger.find(&signature).unwrap().state,
        State::Ended(Terminal::RetriesExhausted, base + INTERVAL)
    );
    assert_eq!(ledger.live(), 0);
    for n in 2..6 {
        assert!(tick(&mut ledger, base + INTERVAL * n).is_empty());
    }
}

#[test]
fn ledger_max_retries_two_sends_three_times() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let id = ledger.accept(new_tx(Some(2), base), base);
    let mut sent = Vec::new();
    let mut ended = Vec::new();
    for n in 0..8 {
        let out = tick(&mut ledger, base + INTERVAL * n);
        sent.extend(sends(&out));
        ended.extend(retired(&out));
    }
    assert_eq!(sent, vec![(id, 0), (id, 1), (id, 2)]);
    assert_eq!(ended, vec![(id, Terminal::RetriesExhausted)]);
    assert_eq!(
        ledger.get(id).unwrap().state,
        State::Ended(Terminal::RetriesExhausted, base + INTERVAL * 3)
    );
}

#[test]
fn ledger_expires_by_slot() {
    let base = Instant::now();
    let mut ledger = Ledger::new(LedgerConfig {
        expiry_slots: 10,
        ..config()
    });
    ledger.on_slot(100);
    let (id, _) = accept_and_send(&mut ledger, None, &[addr(1)], base);
    // Expires after slot 110; time alone (far past 10 slots' worth) does not end it.
    ledger.on_slot(110);
    ledger.on_slot(105); // older slots are ignored
    let t1 = base + INTERVAL * 10;
    assert_eq!(sends(&tick(&mut ledger, t1)), vec![(id, 1)]);
    ledger.on_slot(111);
    // Not until it is due again.
    assert!(tick(&mut ledger, t1 + INTERVAL / 2).is_empty());
    let out = tick(&mut ledger, t1 + INTERVAL);
    assert_eq!(
        out,
        vec![Action::Retired {
            id,
            terminal: Terminal::Expired,
            age: INTERVAL * 11
        }]
    );
    assert!(tick(&mut ledger, t1 + INTERVAL * 2).is_empty());
    assert_eq!(ledger.live(), 0);
}

#[test]
fn ledger_expires_by_time_when_no_slot_is_known() {
    let base = Instant::now();
    // 10 slots of 400 ms: expires 4 s after acceptance.
    let mut ledger = Ledger::new(LedgerConfig {
        expiry_slots: 10,
        ..config()
    });
    let (id, _) = accept_and_send(&mut ledger, None, &[addr(1)], base);
    // A slot learned after acceptance does not change its expiry.
    ledger.on_slot(1_000);
    assert_eq!(sends(&tick(&mut ledger, base + INTERVAL)), vec![(id, 1)]);
    let out = tick(&mut ledger, base + INTERVAL * 2);
    assert_eq!(retired(&out), vec![(id, Terminal::Expired)]);
    assert!(sends(&out).is_empty());
    assert!(tick(&mut ledger, base + INTERVAL * 3).is_empty());
}

#[test]
fn ledger_first_send_is_made_even_when_already_past_expiry() {
    let base = Instant::now();
    let mut ledger = Ledger::new(LedgerConfig {
        expiry_slots: 10,
        ..config()
    });
    let id = ledger.accept(new_tx(None, base), base);
    let late = base + Duration::from_secs(30);
    assert_eq!(sends(&tick(&mut ledger, late)), vec![(id, 0)]);
    assert_eq!(
        retired(&tick(&mut ledger, late + INTERVAL)),
        vec![(id, Terminal::Expired)]
    );
}

#[test]
fn ledger_landed_in_flight_retires_and_stops_sending() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (id, signature) = accept_and_send(&mut ledger, None, &[addr(1)], base);
    let at = base + Duration::from_millis(700);
    let mut out = Vec::new();
    ledger.on_landed(&signature, Some(42), at, &mut out);
    assert_eq!(
        out,
        vec![Action::Retired {
            id,
            terminal: Terminal::Landed,
            age: Duration::from_millis(700)
        }]
    );
    let record = ledger.find(&signature).unwrap();
    assert_eq!(record.landed_slot, Some(42));
    assert_eq!(record.state, State::Ended(Terminal::Landed, at));
    assert_eq!(ledger.live(), 0);
    assert!(ledger.in_flight_signatures().is_empty());

    // Seen landed again: nothing.
    out.clear();
    ledger.on_landed(&signature, Some(43), at + INTERVAL, &mut out);
    assert!(out.is_empty());
    assert_eq!(ledger.get(id).unwrap().landed_slot, Some(42));
    // Never sent again.
    for n in 1..6 {
        assert!(tick(&mut ledger, base + INTERVAL * n).is_empty());
    }
    // Its first send's outcome still counts.
    ledger.on_send_outcome(id, 0, addr(1), OutcomeKind::Sent);
    assert_eq!(first_sends(&mut ledger), vec![(id, FirstSendDone::Sent)]);
}

#[test]
fn ledger_landed_unknown_signature_does_nothing() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (id, _) = accept_and_send(&mut ledger, None, &[addr(1)], base);
    let mut out = Vec::new();
    ledger.on_landed(&Signature::new_unique(), Some(7), base, &mut out);
    assert!(out.is_empty());
    assert_eq!(ledger.live(), 1);
    let record = ledger.get(id).unwrap();
    assert_eq!(record.state, State::InFlight);
    assert_eq!(record.landed_slot, None);
    assert_eq!(sends(&tick(&mut ledger, base + INTERVAL)), vec![(id, 1)]);
}

#[test]
fn ledger_shutdown_retires_all_and_abandon_settles_first_sends() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (a, b) = (addr(1), addr(2));
    // Settled before shutdown.
    let (done, _) = accept_and_send(&mut ledger, None, &[a], base);
    ledger.on_send_outcome(done, 0, a, OutcomeKind::Sent);
    assert_eq!(first_sends(&mut ledger), vec![(done, FirstSendDone::Sent)]);
    // One of two targets reported Sent.
    let (half_sent, _) = accept_and_send(&mut ledger, None, &[a, b], base);
    ledger.on_send_outcome(half_sent, 0, a, OutcomeKind::Sent);
    // One of two targets reported dropped.
    let (half_dropped, _) = accept_and_send(&mut ledger, None, &[a, b], base);
    ledger.on_send_outcome(
        half_dropped,
        0,
        a,
        OutcomeKind::Dropped(DropReason::Backoff),
    );
    // Sent, never reported to the ledger.
    let unreported = ledger.accept(new_tx(None, base), base);
    assert_eq!(sends(&tick(&mut ledger, base)), vec![(unreported, 0)]);
    // Accepted, never sent.
    let queued = ledger.accept(new_tx(None, base), base);
    assert!(first_sends(&mut ledger).is_empty());
    assert_eq!(ledger.live(), 5);

    let at = base + Duration::from_secs(1);
    let mut out = Vec::new();
    ledger.shutdown(at, &mut out);
    let mut ended = retired(&out);
    ended.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(
        ended,
        [done, half_sent, half_dropped, unreported, queued]
            .into_iter()
            .map(|id| (id, Terminal::Shutdown))
            .collect::<Vec<_>>()
    );
    assert!(sends(&out).is_empty());
    assert_eq!(ledger.live(), 0);
    // Shutdown alone does not settle first sends.
    assert!(first_sends(&mut ledger).is_empty());
    assert!(ledger.first_sends_pending());
    // A second shutdown retires nothing again.
    out.clear();
    ledger.shutdown(at, &mut out);
    assert!(out.is_empty());

    ledger.abandon_first_sends(DropReason::Shutdown);
    let shut = FirstSendDone::Dropped(FirstDrop::Engine(DropReason::Shutdown));
    assert_eq!(
        first_sends(&mut ledger),
        vec![
            (half_sent, FirstSendDone::Sent),
            (half_dropped, shut),
            (unreported, shut),
            (queued, shut),
        ]
    );
    assert!(!ledger.first_sends_pending());
    // Late outcomes and reports change nothing.
    ledger.on_send_outcome(half_dropped, 0, b, OutcomeKind::Sent);
    ledger.on_submitted(unreported, 0, &[], at);
    ledger.abandon_first_sends(DropReason::Shutdown);
    assert!(first_sends(&mut ledger).is_empty());
    assert!(tick(&mut ledger, at + INTERVAL * 10).is_empty());
}

#[test]
fn ledger_forgets_ended_records_after_keep_ended() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    let (id, signature) = accept_and_send(&mut ledger, None, &[addr(1)], base);
    ledger.on_send_outcome(id, 0, addr(1), OutcomeKind::Sent);
    let mut out = Vec::new();
    let ended_at = base + Duration::from_secs(1);
    ledger.on_landed(&signature, Some(5), ended_at, &mut out);
    assert_eq!(retired(&out), vec![(id, Terminal::Landed)]);

    let keep = config().keep_ended;
    assert!(tick(&mut ledger, ended_at + keep - Duration::from_millis(1)).is_empty());
    assert_eq!(ledger.find(&signature).unwrap().landed_slot, Some(5));
    assert!(tick(&mut ledger, ended_at + keep).is_empty());
    assert!(ledger.find(&signature).is_none());
    assert!(ledger.get(id).is_none());
    // A forgotten signature seen landed: nothing.
    out.clear();
    ledger.on_landed(&signature, Some(6), ended_at + keep, &mut out);
    assert!(out.is_empty());
}

#[test]
fn ledger_forgets_the_oldest_ended_records_beyond_max_ended() {
    let base = Instant::now();
    let mut ledger = Ledger::new(LedgerConfig {
        max_ended: 2,
        ..config()
    });
    let mut txs = Vec::new();
    for n in 0..3u32 {
        let now = base + Duration::from_millis(u64::from(n));
        let (id, signature) = accept_and_send(&mut ledger, None, &[addr(1)], now);
        ledger.on_send_outcome(id, 0, addr(1), OutcomeKind::Sent);
        let mut out = Vec::new();
        ledger.on_landed(&signature, None, now, &mut out);
        assert_eq!(retired(&out), vec![(id, Terminal::Landed)]);
        txs.push((id, signature));
    }
    // Three ended, two allowed: the first ended is forgotten on the next tick.
    let at = base + Duration::from_secs(1);
    assert!(ledger.find(&txs[0].1).is_some());
    assert!(tick(&mut ledger, at).is_empty());
    assert!(ledger.find(&txs[0].1).is_none());
    assert!(ledger.get(txs[0].0).is_none());
    assert!(ledger.find(&txs[1].1).is_some());
    assert!(ledger.find(&txs[2].1).is_some());
    assert!(tick(&mut ledger, at).is_empty());
    assert!(ledger.find(&txs[1].1).is_some());
}

#[test]
fn ledger_keeps_ended_records_while_their_first_send_waits() {
    let base = Instant::now();
    let mut ledger = Ledger::new(LedgerConfig {
        max_ended: 1,
        ..config()
    });
    let (a, b) = (addr(1), addr(2));
    let (id, signature) = accept_and_send(&mut ledger, None, &[a, b], base);
    let mut out = Vec::new();
    ledger.on_landed(&signature, Some(9), base, &mut out);
    assert_eq!(retired(&out), vec![(id, Terminal::Landed)]);

    // Long past keep_ended: kept, its outcomes are still coming.
    let late = base + config().keep_ended * 3;
    assert!(tick(&mut ledger, late).is_empty());
    assert!(ledger.find(&signature).is_some());
    ledger.on_send_outcome(id, 0, a, OutcomeKind::Dropped(DropReason::Evicted));
    assert!(tick(&mut ledger, late).is_empty());
    assert!(ledger.find(&signature).is_some());
    assert!(first_sends(&mut ledger).is_empty());

    // The last outcome settles it; the next tick forgets it.
    ledger.on_send_outcome(id, 0, b, OutcomeKind::Dropped(DropReason::Backoff));
    assert_eq!(
        first_sends(&mut ledger),
        vec![(
            id,
            FirstSendDone::Dropped(FirstDrop::Engine(DropReason::Backoff))
        )]
    );
    assert!(ledger.find(&signature).is_some());
    assert!(tick(&mut ledger, late).is_empty());
    assert!(ledger.find(&signature).is_none());
}

#[test]
fn ledger_keeps_records_shut_down_before_their_first_send_until_abandoned() {
    let base = Instant::now();
    let mut ledger = Ledger::new(LedgerConfig {
        max_ended: 0,
        ..config()
    });
    let tx = new_tx(None, base);
    let signature = tx.signature;
    let id = ledger.accept(tx, base);
    let mut out = Vec::new();
    ledger.shutdown(base, &mut out);
    assert_eq!(retired(&out), vec![(id, Terminal::Shutdown)]);
    assert!(tick(&mut ledger, base + config().keep_ended).is_empty());
    assert!(ledger.find(&signature).is_some());
    ledger.abandon_first_sends(DropReason::Shutdown);
    assert_eq!(
        first_sends(&mut ledger),
        vec![(
            id,
            FirstSendDone::Dropped(FirstDrop::Engine(DropReason::Shutdown))
        )]
    );
    assert!(tick(&mut ledger, base + config().keep_ended).is_empty());
    assert!(ledger.find(&signature).is_none());
}

#[test]
fn ledger_live_counts_transactions_not_yet_ended() {
    let base = Instant::now();
    let mut ledger = Ledger::new(config());
    assert_eq!(ledger.live(), 0);
    let (_, landed) = accept_and_send(&mut ledger, None, &[addr(1)], base);
    accept_and_send(&mut ledger, Some(0), &[addr(1)], base);
    accept_and_send(&mut ledger, None, &[], base);
    let queued = ledger.accept(new_tx(None, base), base);
    assert_eq!(ledger.live(), 4);

    let mut out = Vec::new();
    ledger.on_landed(&landed, None, base, &mut out);
    assert_eq!(ledger.live(), 3);
    // Landed twice, or unknown: no change.
    ledger.on_landed(&landed, None, base, &mut out);
    ledger.on_landed(&Signature::new_unique(), None, base, &mut out);
    assert_eq!(ledger.live(), 3);

    // The Some(0) one is exhausted; the queued one goes out; the others rebroadcast.
    let out = tick(&mut ledger, base + INTERVAL);
    assert_eq!(retired(&out).len(), 1);
    assert_eq!(sends(&out).len(), 2);
    assert!(sends(&out).contains(&(queued, 0)));
    assert_eq!(ledger.live(), 2);

    let mut out = Vec::new();
    ledger.shutdown(base + INTERVAL, &mut out);
    assert_eq!(retired(&out).len(), 2);
    assert_eq!(ledger.live(), 0);
}

// ---------------------------------------------------------------- properties

const P_INTERVAL_MS: u64 = 1_000;
const P_EXPIRY_SLOTS: u64 = 5;
const MAX_ACCEPTS: usize = 8;

fn p_config() -> LedgerConfig {
    LedgerConfig {
        retry_interval: Duration::from_millis(P_INTERVAL_MS),
        expiry_slots: P_EXPIRY_SLOTS,
        // 5 slots of 1 s: expiry by time after 5 s.
        slot_duration: Duration::from_secs(1),
        max_send_records: 4,
        keep_ended: Duration::from_secs(4),
        max_ended: 3,
        ..LedgerConfig::default()
    }
}

/// One thing the owner can feed the ledger. A `pick` indexes (modulo its length)
/// the model's list of what is possible at that point; with an empty list the
/// step does nothing.
#[derive(Clone, Debug)]
enum Op {
    Accept(Option<usize>),
    /// Advance time by this many milliseconds, then tick.
    Tick(u64),
    /// Report a Send received but not yet reported, for this subset (bit mask) of
    /// three targets.
    Submitted {
        pick: usize,
        targets: u8,
    },
    /// An outcome for a submitted (id, attempt, target) still without one.
    Outcome {
        pick: usize,
        kind: OutcomeKind,
    },
    /// Landed: a known signature (`Some`) or an unknown one.
    Landed {
        pick: Option<usize>,
        slot: Option<u64>,
    },
    /// Advance the slot by this much (the first one sets it).
    Slot(u64),
    Shutdown,
    AbandonFirstSends,
}

fn drop_reason() -> impl Strategy<Value = DropReason> {
    prop_oneof![
        Just(DropReason::EngineQueueFull),
        Just(DropReason::ConnectionQueueFull),
        Just(DropReason::Backoff),
        Just(DropReason::HandshakeTimeout),
        Just(DropReason::HandshakeFailed),
        (0u64..8).prop_map(DropReason::ClosedByPeer),
        Just(DropReason::ConnectionLost),
        Just(DropReason::Evicted),
        Just(DropReason::Shutdown),
    ]
}

fn outcome_kind() -> impl Strategy<Value = OutcomeKind> {
    prop_oneof![
        Just(OutcomeKind::Sent),
        drop_reason().prop_map(OutcomeKind::Dropped),
    ]
}

fn max_retries() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![Just(None), (0usize..=3).prop_map(Some)]
}

fn tick_op() -> impl Strategy<Value = Op> {
    (0..=3 * P_INTERVAL_MS).prop_map(Op::Tick)
}

fn submitted_op() -> impl Strategy<Value = Op> {
    (any::<usize>(), 0u8..8).prop_map(|(pick, targets)| Op::Submitted { pick, targets })
}

fn outcome_op() -> impl Strategy<Value = Op> {
    (any::<usize>(), outcome_kind()).prop_map(|(pick, kind)| Op::Outcome { pick, kind })
}

fn landed_op() -> impl Strategy<Value = Op> {
    (
        proptest::option::weighted(0.9, any::<usize>()),
        proptest::option::of(0u64..1_000),
    )
        .prop_map(|(pick, slot)| Op::Landed { pick, slot })
}

fn slot_op() -> impl Strategy<Value = Op> {
    (0u64..=3).prop_map(Op::Slot)
}

/// Before shutdown.
fn running_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => max_retries().prop_map(Op::Accept),
        3 => tick_op(),
        3 => submitted_op(),
        3 => outcome_op(),
        1 => landed_op(),
        1 => slot_op(),
    ]
}

/// After shutdown: no more accepts; late reports and outcomes still arrive.
fn closing_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => tick_op(),
        3 => submitted_op(),
        3 => outcome_op(),
        1 => landed_op(),
        1 => slot_op(),
        1 => Just(Op::AbandonFirstSends),
    ]
}

#[derive(Clone, Copy, Debug)]
enum ModelExpiry {
    Slot(u64),
    At(Instant),
}

/// The model's view of one transaction.
#[derive(Debug)]
struct ModelTx {
    id: TxId,
    signature: Signature,
    wire: Arc<[u8]>,
    max_retries: Option<usize>,
    accepted_at: Instant,
    expiry: ModelExpiry,
    /// When each attempt was asked for (index: attempt).
    sends: Vec<Instant>,
    retired: Option<Terminal>,
    /// Targets of the first send, once reported.
    first_targets: Option<usize>,
    /// The first send's outcomes so far.
    first_outcomes: Vec<OutcomeKind>,
    /// Settled (from `take_first_sends`).
    settled: Option<FirstSendDone>,
    /// What the model expects to settle at the end of the current step.
    to_settle: Option<FirstSendDone>,
}

impl ModelTx {
    fn in_flight(&self) -> bool {
        self.retired.is_none() && !self.sends.is_empty()
    }

    /// What the first send settles as once every target reported: sent when any
    /// target took it, else dropped with the last target's reason.
    fn first_result(&self) -> Option<FirstSendDone> {
        let targets = self.first_targets?;
        if targets == 0 {
            return Some(FirstSendDone::Dropped(FirstDrop::NoLeader));
        }
        if self.first_outcomes.len() < targets {
            return None;
        }
        if self.first_outcomes.contains(&OutcomeKind::Sent) {
            return Some(FirstSendDone::Sent);
        }
        let last = self.first_outcomes.iter().rev().find_map(|k| match k {
            OutcomeKind::Dropped(r) => Some(*r),
            OutcomeKind::Sent => None,
        })?;
        Some(FirstSendDone::Dropped(FirstDrop::Engine(last)))
    }

    /// What an abandoned first send settles as: sent when any target took it
    /// already, else dropped with `reason`.
    fn abandoned_result(&self, reason: DropReason) -> FirstSendDone {
        if self.first_outcomes.contains(&OutcomeKind::Sent) {
            FirstSendDone::Sent
        } else {
            FirstSendDone::Dropped(FirstDrop::Engine(reason))
        }
    }
}

/// Where an action may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Tick,
    Landed(Option<TxId>),
    Shutdown,
    Other,
}

struct Harness {
    ledger: Ledger,
    config: LedgerConfig,
    now: Instant,
    slot: Option<u64>,
    txs: Vec<ModelTx>,
    by_id: HashMap<TxId, usize>,
    /// Send actions received, not yet reported with `on_submitted`.
    unreported: Vec<(TxId, u32)>,
    /// Submitted (id, attempt, target) without an outcome yet.
    pending: Vec<(TxId, u32, SocketAddr)>,
    shut_down: bool,
    abandoned: bool,
}

impl Harness {
    fn new() -> Self {
        let config = p_config();
        Self {
            ledger: Ledger::new(config.clone()),
            config,
            now: Instant::now(),
            slot: None,
            txs: Vec::new(),
            by_id: HashMap::new(),
            unreported: Vec::new(),
            pending: Vec::new(),
            shut_down: false,
            abandoned: false,
        }
    }

    fn tx(&mut self, id: TxId) -> &mut ModelTx {
        let i = *self
            .by_id
            .get(&id)
            .unwrap_or_else(|| panic!("unknown id {id}"));
        &mut self.txs[i]
    }

    fn expired(&self, tx: &ModelTx) -> bool {
        match tx.expiry {
            ModelExpiry::Slot(s) => self.slot.is_some_and(|cur| cur > s),
            ModelExpiry::At(at) => self.now >= at,
        }
    }

    fn step(&mut self, op: &Op) {
        let mut out = Vec::new();
        let source = match *op {
            Op::Accept(max_retries) => {
                if self.txs.len() < MAX_ACCEPTS && !self.shut_down {
                    self.accept(max_retries);
                }
                Source::Other
            }
            Op::Tick(ms) => {
                self.now += Duration::from_millis(ms);
                self.ledger.tick(self.now, &mut out);
                Source::Tick
            }
            Op::Submitted { pick, targets } => {
                if !self.unreported.is_empty() {
                    let (id, attempt) = self.unreported.remove(pick % self.unreported.len());
                    let targets: Vec<SocketAddr> = (0..3u16)
                        .filter(|b| targets & (1 << b) != 0)
                        .map(|b| addr(b + 1))
                        .collect();
                    self.ledger.on_submitted(id, attempt, &targets, self.now);
                    self.pending
                        .extend(targets.iter().map(|&t| (id, attempt, t)));
                    let tx = self.tx(id);
                    if attempt == 0 && tx.settled.is_none() {
                        assert!(tx.first_targets.is_none(), "first send reported twice");
                        tx.first_targets = Some(targets.len());
                        tx.to_settle = tx.first_result();
                    }
                }
                Source::Other
            }
            Op::Outcome { pick, kind } => {
                if !self.pending.is_empty() {
                    let (id, attempt, target) = self.pending.remove(pick % self.pending.len());
                    self.ledger.on_send_outcome(id, attempt, target, kind);
                    let tx = self.tx(id);
                    if attempt == 0 && tx.settled.is_none() {
                        tx.first_outcomes.push(kind);
                        tx.to_settle = tx.first_result();
                    }
                }
                Source::Other
            }
            Op::Landed { pick, slot } => {
                let (signature, expect) = match pick {
                    Some(pick) if !self.txs.is_empty() => {
                        let tx = &self.txs[pick % self.txs.len()];
                        (tx.signature, tx.in_flight().then_some(tx.id))
                    }
                    _ => (Signature::new_unique(), None),
                };
                self.ledger.on_landed(&signature, slot, self.now, &mut out);
                let ended = retired(&out);
                assert_eq!(
                    ended,
                    expect
                        .map(|id| (id, Terminal::Landed))
                        .into_iter()
                        .collect::<Vec<_>>(),
                    "on_landed retires exactly the in-flight transaction it names"
                );
                if let Some(id) = expect {
                    let record = self.ledger.get(id).unwrap();
                    assert_eq!(record.landed_slot, slot);
                    assert_eq!(record.state, State::Ended(Terminal::Landed, self.now));
                }
                Source::Landed(expect)
            }
            Op::Slot(by) => {
                let slot = self.slot.map_or(100 + by, |s| s + by);
                self.slot = Some(slot);
                self.ledger.on_slot(slot);
                // An older slot never moves it back.
                self.ledger.on_slot(slot.saturating_sub(2));
                Source::Other
            }
            Op::Shutdown => {
                assert!(!self.shut_down, "the harness shuts down once");
                self.shut_down = true;
                self.ledger.shutdown(self.now, &mut out);
                let mut ended = retired(&out);
                ended.sort_unstable_by_key(|(id, _)| *id);
                let mut expect: Vec<_> = self
                    .txs
                    .iter()
                    .filter(|t| t.retired.is_none())
                    .map(|t| (t.id, Terminal::Shutdown))
                    .collect();
                expect.sort_unstable_by_key(|(id, _)| *id);
                assert_eq!(ended, expect, "shutdown retires every live transaction");
                Source::Shutdown
            }
            Op::AbandonFirstSends => {
                assert!(self.shut_down, "abandon only after shutdown");
                self.abandoned = true;
                self.ledger.abandon_first_sends(DropReason::Shutdown);
                for tx in self.txs.iter_mut().filter(|t| t.settled.is_none()) {
                    tx.to_settle = Some(tx.abandoned_result(DropReason::Shutdown));
                }
                Source::Other
            }
        };
        for action in out {
            self.check_action(action, source);
        }
        self.check_first_sends();
        self.check_state(source);
    }

    fn accept(&mut self, max_retries: Option<usize>) {
        let mut tx = new_tx(max_retries, self.now);
        let n = u8::try_from(self.txs.len()).unwrap();
        tx.wire = Arc::from(vec![n; usize::from(n) + 1]);
        let expiry = match self.slot {
            Some(s) => ModelExpiry::Slot(s + P_EXPIRY_SLOTS),
            None => ModelExpiry::At(
                self.now + self.config.slot_duration * u32::try_from(P_EXPIRY_SLOTS).unwrap(),
            ),
        };
        let model = ModelTx {
            id: 0,
            signature: tx.signature,
            wire: tx.wire.clone(),
            max_retries,
            accepted_at: self.now,
            expiry,
            sends: Vec::new(),
            retired: None,
            first_targets: None,
            first_outcomes: Vec::new(),
            settled: None,
            to_settle: None,
        };
        let id = self.ledger.accept(tx, self.now);
        assert!(!self.by_id.contains_key(&id), "id {id} given twice");
        self.by_id.insert(id, self.txs.len());
        self.txs.push(ModelTx { id, ..model });
    }

    fn check_action(&mut self, action: Action, source: Source) {
        let now = self.now;
        let interval = self.config.retry_interval;
        match action {
            Action::Send { id, attempt, wire } => {
                assert_eq!(source, Source::Tick, "Send only from tick");
                let i = self.by_id[&id];
                let expired = self.expired(&self.txs[i]);
                let tx = &mut self.txs[i];
                // (c) nothing is sent after it ended.
                assert_eq!(tx.retired, None, "Send for {id} after it was retired");
                // (d) attempts 0, 1, 2, ... without gaps.
                assert_eq!(
                    usize::try_from(attempt).unwrap(),
                    tx.sends.len(),
                    "attempt of {id}"
                );
                // (e) at most max_retries + 1 sends.
                if let Some(k) = tx.max_retries {
                    assert!(tx.sends.len() < k + 1, "{id} sent more than {k} + 1 times");
                }
                assert_eq!(wire, tx.wire);
                if let Some(&last) = tx.sends.last() {
                    assert!(now >= last + interval, "rebroadcast of {id} too early");
                    assert!(!expired, "rebroadcast of {id} after it expired");
                }
                tx.sends.push(now);
                self.unreported.push((id, attempt));
            }
            Action::Retired { id, terminal, age } => {
                let i = self.by_id[&id];
                let expired = self.expired(&self.txs[i]);
                let tx = &mut self.txs[i];
                // (b) exactly one terminal state.
                assert_eq!(
                    tx.retired, None,
                    "{id} retired twice ({terminal:?} after {:?})",
                    tx.retired
                );
                assert_eq!(age, now - tx.accepted_at, "age of {id}");
                match terminal {
                    Terminal::Landed => assert_eq!(source, Source::Landed(Some(id))),
                    Terminal::Shutdown => assert_eq!(source, Source::Shutdown),
                    Terminal::Expired => {
                        assert_eq!(source, Source::Tick);
                        assert!(expired, "{id} retired Expired before its expiry");
                        let last = *tx.sends.last().unwrap();
                        assert!(now >= last + interval);
                    }
                    Terminal::RetriesExhausted => {
                        assert_eq!(source, Source::Tick);
                        assert!(!expired, "expiry comes first");
                        let k = tx.max_retries.unwrap();
                        assert_eq!(tx.sends.len(), k + 1, "{id} retired before its retries");
                        let last = *tx.sends.last().unwrap();
                        assert!(now >= last + interval);
                    }
                    Terminal::NonceAdvanced => {
                        panic!("{id}: no nonce status is fed in this model")
                    }
                }
                tx.retired = Some(terminal);
            }
        }
    }

    /// (a) The first-send accounting.
    fn check_first_sends(&mut self) {
        let events: Vec<_> = self.ledger.take_first_sends().collect();
        let mut seen = HashSet::new();
        for (id, done) in events {
            assert!(seen.insert(id), "{id} settled twice in one step");
            let tx = self.tx(id);
            assert_eq!(
                tx.settled, None,
                "{id} settled twice: {done:?} after {:?}",
                tx.settled
            );
            assert_eq!(tx.to_settle, Some(done), "{id} settled unexpectedly");
            tx.settled = Some(done);
            tx.to_settle = None;
        }
        for tx in &self.txs {
            assert_eq!(
                tx.to_settle, None,
                "{} should have settled as {:?}",
                tx.id, tx.to_settle
            );
        }
        let sent = self
            .txs
            .iter()
            .filter(|t| t.settled == Some(FirstSendDone::Sent))
            .count();
        let dropped = self
            .txs
            .iter()
            .filter(|t| matches!(t.settled, Some(FirstSendDone::Dropped(_))))
            .count();
        let unsettled = self.txs.iter().filter(|t| t.settled.is_none()).count();
        assert_eq!(self.txs.len(), sent + dropped + unsettled);
        assert_eq!(self.ledger.first_sends_pending(), unsettled > 0);
    }

    fn check_state(&self, source: Source) {
        let retired = self.txs.iter().filter(|t| t.retired.is_some()).count();
        // (b) live = accepted - retired.
        assert_eq!(self.ledger.live(), self.txs.len() - retired, "live()");
        let mut in_flight: Vec<_> = self
            .txs
            .iter()
            .filter(|t| t.in_flight())
            .map(|t| t.signature)
            .collect();
        in_flight.sort_unstable();
        let mut reported = self.ledger.in_flight_signatures();
        reported.sort_unstable();
        assert_eq!(reported, in_flight, "in_flight_signatures()");
        for tx in &self.txs {
            let Some(record) = self.ledger.get(tx.id) else {
                // Forgotten: only once ended and its first send settled.
                assert!(tx.retired.is_some(), "{} forgotten while live", tx.id);
                assert!(tx.settled.is_some(), "{} forgotten while unsettled", tx.id);
                assert!(self.ledger.find(&tx.signature).is_none());
                continue;
            };
            assert_eq!(record.signature, tx.signature);
            assert_eq!(record.accepted_at, tx.accepted_at);
            assert!(
                std::ptr::eq(self.ledger.find(&tx.signature).unwrap(), record),
                "find() and get() disagree"
            );
            match tx.retired {
                Some(t) => assert!(matches!(record.state, State::Ended(e, _) if e == t)),
                None if tx.sends.is_empty() => assert_eq!(record.state, State::Queued),
                None => assert_eq!(record.state, State::InFlight),
            }
            let expect = tx.settled.map(|d| match d {
                FirstSendDone::Sent => Ok(()),
                FirstSendDone::Dropped(r) => Err(r),
            });
            assert_eq!(record.first_send, expect, "first_send of {}", tx.id);
            assert!(record.sends.len() <= self.config.max_send_records);
            // Nothing live is overdue after a tick.
            if source == Source::Tick && tx.retired.is_none() {
                let last = *tx.sends.last().unwrap();
                assert!(
                    last + self.config.retry_interval > self.now,
                    "{} overdue after a tick",
                    tx.id
                );
            }
        }
    }

    fn finish(&mut self) {
        if !self.shut_down {
            self.step(&Op::Shutdown);
        }
        self.step(&Op::AbandonFirstSends);
        self.step(&Op::Tick(0));
        self.step(&Op::Tick(10 * P_INTERVAL_MS));
        assert_eq!(self.ledger.live(), 0);
        assert!(!self.ledger.first_sends_pending());
        for tx in &self.txs {
            assert!(tx.retired.is_some(), "{} never retired", tx.id);
            assert!(tx.settled.is_some(), "{} never settled", tx.id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ledger_random_interleavings_keep_the_accounting(
        running in proptest::collection::vec(running_op(), 0..80),
        closing in proptest::collection::vec(closing_op(), 0..16),
    ) {
        let mut h = Harness::new();
        for op in &running {
            h.step(op);
        }
        h.step(&Op::Shutdown);
        for op in &closing {
            h.step(op);
        }
        h.finish();
        prop_assert!(h.abandoned);
    }
}

/// Sends attempt 0 of everything due at `now` to one target, reported as sent.
fn send_all(l: &mut Ledger, now: Instant) {
    let mut out = Vec::new();
    l.tick(now, &mut out);
    for a in out {
        if let Action::Send { id, attempt, .. } = a {
            l.on_submitted(id, attempt, &[addr(1)], now);
            l.on_send_outcome(id, attempt, addr(1), OutcomeKind::Sent);
        }
    }
}

#[test]
fn ledger_expires_by_blockhash_after_its_grace() {
    let config = LedgerConfig::default();
    let grace = config.blockhash_grace;
    let mut l = Ledger::new(config);
    let t0 = Instant::now();
    let hash = Hash::new_unique();
    let other = Hash::new_unique();
    let a = l.accept(
        NewTx {
            client: None,
            lifetime: Lifetime::Blockhash(hash),
            ..new_tx(None, t0)
        },
        t0,
    );
    let b = l.accept(
        NewTx {
            client: None,
            lifetime: Lifetime::Blockhash(hash),
            ..new_tx(None, t0)
        },
        t0,
    );
    let c = l.accept(
        NewTx {
            client: None,
            lifetime: Lifetime::Blockhash(other),
            ..new_tx(None, t0)
        },
        t0,
    );
    send_all(&mut l, t0);
    let mut hashes = l.blockhashes();
    hashes.sort();
    let mut want = vec![hash, other];
    want.sort();
    assert_eq!(hashes, want, "one entry per distinct blockhash");
    let mut out = Vec::new();
    // Invalid, but within the grace window (the client may be ahead of our RPC).
    l.on_blockhash_status(&hash, false, t0, &mut out);
    l.on_blockhash_status(&hash, false, t0 + grace / 2, &mut out);
    assert!(out.is_empty());
    // Valid again resets the window.
    l.on_blockhash_status(&hash, true, t0 + grace / 2, &mut out);
    l.on_blockhash_status(&hash, false, t0 + grace, &mut out);
    assert!(out.is_empty(), "the window restarted");
    l.on_blockhash_status(&hash, false, t0 + grace * 2, &mut out);
    let retired: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Retired { id, terminal, .. } => Some((*id, *terminal)),
            Action::Send { .. } => None,
        })
        .collect();
    assert_eq!(retired.len(), 2);
    assert!(retired.contains(&(a, Terminal::Expired)));
    assert!(retired.contains(&(b, Terminal::Expired)));
    assert_eq!(l.get(c).map(|r| r.state), Some(State::InFlight));
    assert_eq!(
        l.blockhashes(),
        vec![other],
        "the expired blockhash is gone"
    );
    assert_eq!(l.live(), 1);
}

#[test]
fn durable_nonce_transactions_ignore_blockhashes_and_end_at_their_max_age() {
    let config = LedgerConfig {
        retry_interval: Duration::from_secs(1),
        nonce_max_age: Duration::from_secs(90),
        ..LedgerConfig::default()
    };
    let mut l = Ledger::new(config);
    let t0 = Instant::now();
    let id = l.accept(
        NewTx {
            client: None,
            lifetime: Lifetime::Nonce {
                account: None,
                nonce: Hash::new_unique(),
            },
            ..new_tx(None, t0)
        },
        t0,
    );
    send_all(&mut l, t0);
    assert!(l.blockhashes().is_empty(), "no blockhash to ask about");
    // Past the backstop of an ordinary transaction (150 slots of 400 ms: 60 s) it
    // is still rebroadcast...
    let mut out = Vec::new();
    let mut now = t0;
    while now < t0 + Duration::from_secs(89) {
        now += Duration::from_secs(1);
        l.tick(now, &mut out);
    }
    assert!(out.iter().all(|a| matches!(a, Action::Send { .. })));
    assert_eq!(l.get(id).map(|r| r.state), Some(State::InFlight));
    // ...and given up at its own limit.
    out.clear();
    l.tick(t0 + Duration::from_secs(91), &mut out);
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Retired {
                terminal: Terminal::Expired,
                ..
            }
        )),
        "{out:?}"
    );
}

#[test]
fn durable_nonce_transactions_end_once_their_nonce_has_advanced() {
    let config = LedgerConfig::default();
    let grace = config.blockhash_grace;
    let mut l = Ledger::new(config);
    let t0 = Instant::now();
    let account = Pubkey::new_unique();
    let nonce = Hash::new_unique();
    let nonce_tx = |l: &mut Ledger, nonce: Hash| {
        l.accept(
            NewTx {
                client: None,
                lifetime: Lifetime::Nonce {
                    account: Some(account),
                    nonce,
                },
                ..new_tx(None, t0)
            },
            t0,
        )
    };
    let a = nonce_tx(&mut l, nonce);
    // Signed with the nonce the account will hold next (a client ahead of our RPC).
    let next = Hash::new_unique();
    let b = nonce_tx(&mut l, next);
    send_all(&mut l, t0);
    assert_eq!(l.nonce_accounts(), vec![account], "one entry per account");
    assert!(
        l.blockhashes().is_empty(),
        "nothing to ask isBlockhashValid about"
    );

    let mut out = Vec::new();
    // The account still holds `nonce`: a is fine, b is ahead (within its grace).
    l.on_nonce_status(&account, Some(nonce), t0, &mut out);
    l.on_nonce_status(&account, Some(nonce), t0 + grace / 2, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // It advances to `next`: b is valid now; a is done once that held for the grace.
    l.on_nonce_status(&account, Some(next), t0 + grace, &mut out);
    assert!(out.is_empty(), "within the grace window: {out:?}");
    l.on_nonce_status(&account, Some(next), t0 + grace * 2, &mut out);
    assert_eq!(retired(&out), vec![(a, Terminal::NonceAdvanced)]);
    assert_eq!(l.get(b).map(|r| r.state), Some(State::InFlight));
    // A vanished account (closed): nothing can use its nonce any more.
    out.clear();
    l.on_nonce_status(&account, None, t0 + grace * 3, &mut out);
    l.on_nonce_status(&account, None, t0 + grace * 4, &mut out);
    assert_eq!(retired(&out), vec![(b, Terminal::NonceAdvanced)]);
    assert!(l.nonce_accounts().is_empty(), "no live transaction uses it");
    assert_eq!(l.live(), 0);
}

#[test]
fn a_landed_durable_nonce_transaction_is_landed_not_advanced() {
    // The transaction that advanced its own nonce: the owner feeds the landing
    // first, and the nonce status then finds nothing live.
    let mut l = Ledger::new(LedgerConfig {
        blockhash_grace: Duration::ZERO,
        ..LedgerConfig::default()
    });
    let t0 = Instant::now();
    let account = Pubkey::new_unique();
    let tx = NewTx {
        client: None,
        lifetime: Lifetime::Nonce {
            account: Some(account),
            nonce: Hash::new_unique(),
        },
        ..new_tx(None, t0)
    };
    let signature = tx.signature;
    let id = l.accept(tx, t0);
    send_all(&mut l, t0);
    let mut out = Vec::new();
    l.on_landed(&signature, Some(7), t0, &mut out);
    l.on_nonce_status(&account, Some(Hash::new_unique()), t0, &mut out);
    assert_eq!(retired(&out), vec![(id, Terminal::Landed)]);
}

#[test]
fn send_records_name_each_target_s_leader() {
    let mut l = Ledger::new(config());
    let t0 = Instant::now();
    let id = l.accept(new_tx(None, t0), t0);
    tick(&mut l, t0);
    let leader = Pubkey::new_unique();
    l.on_submitted_to(
        id,
        0,
        &[addr(1), addr(2)],
        |a| (a == addr(1)).then_some(leader),
        t0,
    );
    let r = l.get(id).unwrap();
    let leaders: Vec<_> = r.sends.iter().map(|s| (s.target, s.leader)).collect();
    assert_eq!(
        leaders,
        vec![(Some(addr(1)), Some(leader)), (Some(addr(2)), None)]
    );
    l.set_landed_leader(id, leader);
    assert_eq!(l.get(id).unwrap().landed_leader, Some(leader));
}

#[test]
fn a_lost_engine_settles_what_it_held_and_makes_the_live_ones_due() {
    let mut l = Ledger::new(config());
    let t0 = Instant::now();
    // a: handed over, no outcome yet; b: handed over, one of two targets took it;
    // c: accepted, not handed over yet.
    let a = l.accept(new_tx(None, t0), t0);
    let b = l.accept(new_tx(None, t0), t0);
    let out = tick(&mut l, t0);
    assert_eq!(sends(&out), vec![(a, 0), (b, 0)]);
    l.on_submitted(a, 0, &[addr(1)], t0);
    l.on_submitted(b, 0, &[addr(1), addr(2)], t0);
    l.on_send_outcome(b, 0, addr(1), OutcomeKind::Sent);
    let c = l.accept(new_tx(None, t0), t0);
    let t1 = t0 + Duration::from_millis(100);
    l.engine_lost(t1);
    let mut settled: Vec<_> = l.take_first_sends().collect();
    settled.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(
        settled,
        vec![
            (
                a,
                FirstSendDone::Dropped(FirstDrop::Engine(DropReason::EngineFailed))
            ),
            (b, FirstSendDone::Sent),
        ]
    );
    assert!(
        l.first_sends_pending(),
        "c's first send is still to come (on the next engine)"
    );
    // All three go out at t1, not a retry interval after their first send.
    let mut due = sends(&tick(&mut l, t1));
    due.sort_unstable();
    assert_eq!(due, vec![(a, 1), (b, 1), (c, 0)]);
    l.on_submitted(c, 0, &[addr(1)], t1);
    l.on_send_outcome(c, 0, addr(1), OutcomeKind::Sent);
    assert_eq!(
        l.take_first_sends().collect::<Vec<_>>(),
        vec![(c, FirstSendDone::Sent)]
    );
    assert!(!l.first_sends_pending());
}
