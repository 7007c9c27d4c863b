//! Property tests of the decoder on hostile input: arbitrary bytes, and valid events mutated
//! byte by byte (flips, insertions, deletions, truncations, spliced lines). Whatever comes in,
//! the decoder does not panic, and every non-blank line is either accepted as an event or
//! refused with a reason — nothing is dropped silently, nothing is counted twice.

use passpulse_engine::event::decode_message;
use passpulse_engine::{DecodedBatch, Reason};
use proptest::prelude::*;

const SAMPLE: &str = include_str!("../../data/sample/events.ndjson");

fn sample_lines() -> Vec<&'static str> {
    SAMPLE.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// Non-blank lines as the decoder sees them.
fn lines_in(payload: &[u8]) -> usize {
    payload
        .split(|&b| b == b'\n')
        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .count()
}

/// Decodes `payload` and checks the accounting; returns (accepted, reasons of refusals).
fn check(payload: &[u8]) -> (usize, Vec<Reason>) {
    let mut out = DecodedBatch::new();
    let mut refused = Vec::new();
    let accepted = decode_message(payload, 7, &mut out, |e, bytes| {
        assert!(!e.to_string().is_empty());
        assert!(bytes.len() <= payload.len());
        refused.push(e.reason);
    });
    assert_eq!(accepted, out.len());
    assert_eq!(
        out.last_seq(),
        7,
        "the message is covered even if nothing was accepted"
    );
    let lines = lines_in(payload);
    assert_eq!(
        accepted + refused.len(),
        lines.max(1),
        "every line accepted or refused, once"
    );
    for e in out.iter() {
        assert!(!e.id.is_empty() && e.id.chars().count() <= 128);
        assert_eq!(e.seq, 7);
    }
    (accepted, refused)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Truncate(usize),
    Splice(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::Splice(i, j)),
    ]
}

fn mutate(mut b: Vec<u8>, m: &Mutation, other: &[u8]) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    let at = |i: usize, len: usize| i % (len + 1);
    match *m {
        Mutation::Flip(i, x) => {
            let i = i % b.len();
            b[i] ^= x.max(1);
        }
        Mutation::Insert(i, x) => {
            let i = at(i, b.len());
            b.insert(i, x);
        }
        Mutation::Delete(i, n) => {
            let i = i % b.len();
            let end = (i + n).min(b.len());
            b.drain(i..end);
        }
        Mutation::Truncate(i) => b.truncate(at(i, b.len())),
        Mutation::Splice(i, j) => {
            // the head of this event glued to the tail of another
            let i = at(i, b.len());
            let j = at(j, other.len());
            b.truncate(i);
            b.extend_from_slice(&other[j..]);
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&payload);
    }

    #[test]
    fn arbitrary_json_like_text(payload in r#"[\{\}\[\]":,a-z0-9\.\-\n \\]{0,300}"#) {
        check(payload.as_bytes());
    }

    #[test]
    fn mutated_valid_events(
        picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..8),
        mutations in proptest::collection::vec(mutation(), 0..4),
    ) {
        let lines = sample_lines();
        let mut payload = Vec::new();
        let mut untouched = 0;
        for (k, (a, b)) in picks.iter().enumerate() {
            let mut line = lines[a.index(lines.len())].as_bytes().to_vec();
            let other = lines[b.index(lines.len())].as_bytes();
            // mutate some lines, leave the rest valid
            if k % 2 == 0 {
                for m in &mutations {
                    line = mutate(line, m, other);
                }
            } else {
                untouched += 1;
            }
            payload.extend_from_slice(&line);
            payload.push(b'\n');
        }
        let (accepted, _) = check(&payload);
        if mutations.is_empty() {
            prop_assert_eq!(accepted, picks.len(), "valid lines are all accepted");
        }
        // mutations stay within their own line (its newline is added afterwards), so a broken
        // line never takes a valid neighbour down with it
        prop_assert!(accepted >= untouched, "{} accepted, {} untouched", accepted, untouched);
    }
}

#[test]
fn every_sample_line_is_valid_and_oversized_lines_are_refused_not_loaded() {
    let lines = sample_lines();
    let (accepted, refused) = check(SAMPLE.as_bytes());
    assert_eq!((accepted, refused.len()), (lines.len(), 0));
    // a 2 MiB id: refused with a reason, never stored
    let huge = format!(
        r#"{{"id":"{}","type":"scan","ts":1,"pass":"p","location":"l","device":"d","operator":"o"}}"#,
        "x".repeat(2 << 20)
    );
    let (accepted, refused) = check(huge.as_bytes());
    assert_eq!(accepted, 0);
    assert_eq!(refused, vec![Reason::InvalidValue]);
}
