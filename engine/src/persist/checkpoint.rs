//! The checkpoint file (the commit record of a flush) and the de-duplication segment files.
//!
//! A checkpoint is `magic | header length | header | aggregates length | aggregates | XXH3-64 of
//! everything before`, where the header (postcard) lists the data files, the segments and the
//! last stream sequence covered, and the aggregates are the engine's snapshot (postcard). A torn
//! write fails the length or checksum test; a checkpoint naming a missing or resized file fails
//! [`Checkpoint::verify_files`]. Either way recovery skips it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DataFile;
use crate::dedup::Minute;

const MAGIC: &[u8; 8] = b"PPCKPT01";
const SEGMENT_MAGIC: &[u8; 8] = b"PPIDS001";

/// Directory of checkpoints, relative to the data directory.
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// Directory of de-duplication segments, relative to the data directory.
pub const DEDUP_DIR: &str = "dedup";

/// A persisted set of ids first seen in one flush.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// Relative to the data directory.
    pub path: String,
    pub ids: u64,
    pub bytes: u64,
    /// Newest arrival minute in the segment: it is dropped once that leaves the window.
    pub max_minute: Minute,
}

/// What a checkpoint commits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub generation: u64,
    /// Every event from stream sequences 1..=last_seq is in `files` and in the aggregates.
    pub last_seq: u64,
    /// Wall-clock time of the commit, epoch millis.
    pub created_at: i64,
    /// Events applied, all time.
    pub events: u64,
    /// Duplicates refused, all time.
    pub duplicates: u64,
    pub watermark: Option<i64>,
    pub files: Vec<DataFile>,
    pub segments: Vec<SegmentRef>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
}

fn corrupt(path: &Path, what: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

impl Checkpoint {
    /// File name of generation `g`.
    pub fn file_name(g: u64) -> String {
        format!("checkpoint-{g:010}.ckpt")
    }

    /// Generation of a checkpoint file name, if it is one.
    pub fn generation_of(name: &str) -> Option<u64> {
        name.strip_prefix("checkpoint-")?
            .strip_suffix(".ckpt")?
            .parse()
            .ok()
    }

    /// Encodes the checkpoint with its aggregates snapshot.
    pub fn encode(&self, aggregates: &[u8]) -> Vec<u8> {
        let header = postcard::to_allocvec(self).expect("checkpoint header serialises");
        let mut out = Vec::with_capacity(8 + 8 + header.len() + 8 + aggregates.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(aggregates.len() as u64).to_le_bytes());
        out.extend_from_slice(aggregates);
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Checks that every file and segment named exists with its recorded size.
    pub fn verify_files(&self, root: &Path) -> Result<(), CheckpointError> {
        // data files are checked in the engine's copy (`store/`), segments where they are
        let store = root.join(super::STORE_DIR);
        let sizes = self
            .files
            .iter()
            .map(|f| (store.join(&f.path), f.bytes))
            .chain(self.segments.iter().map(|s| (root.join(&s.path), s.bytes)));
        for (p, bytes) in sizes {
            match std::fs::metadata(&p) {
                Ok(m) if m.len() == bytes => {}
                Ok(m) => {
                    return Err(corrupt(
                        &p,
                        format!("size {} differs from the recorded {bytes}", m.len()),
                    ));
                }
                Err(e) => return Err(CheckpointError::Io { path: p, source: e }),
            }
        }
        Ok(())
    }
}

fn take<'a>(path: &Path, b: &mut &'a [u8], n: usize) -> Result<&'a [u8], CheckpointError> {
    if b.len() < n {
        return Err(corrupt(path, "truncated"));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_u64(path: &Path, b: &mut &[u8]) -> Result<u64, CheckpointError> {
    let s = take(path, b, 8)?;
    Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// Reads only the header of a checkpoint (its file lists), without the aggregates or the
/// checksum: enough to know which files an older checkpoint still needs.
pub fn read_checkpoint_header(path: &Path) -> Result<Checkpoint, CheckpointError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut head = [0u8; 16];
    f.read_exact(&mut head)
        .map_err(|_| corrupt(path, "truncated"))?;
    if &head[..8] != MAGIC {
        return Err(corrupt(path, "not a passpulse checkpoint (bad magic)"));
    }
    let len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > size {
        return Err(corrupt(path, "truncated"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|_| corrupt(path, "truncated"))?;
    postcard::from_bytes(&header).map_err(|e| corrupt(path, format!("header: {e}")))
}

/// Reads and validates a checkpoint file: its header and its aggregates snapshot bytes.
pub fn read_checkpoint(path: &Path) -> Result<(Checkpoint, Vec<u8>), CheckpointError> {
    let data = std::fs::read(path).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if data.len() < 8 + 8 + 8 + 8 || &data[..8] != MAGIC {
        return Err(corrupt(
            path,
            "not a passpulse checkpoint (bad magic or too short)",
        ));
    }
    let (body, sum) = data.split_at(data.len() - 8);
    let sum = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
    if xxhash_rust::xxh3::xxh3_64(body) != sum {
        return Err(corrupt(path, "checksum mismatch (torn or damaged write)"));
    }
    let mut b = &body[8..];
    let hlen = take_u64(path, &mut b)? as usize;
    let header = take(path, &mut b, hlen)?;
    let alen = take_u64(path, &mut b)? as usize;
    let aggs = take(path, &mut b, alen)?;
    if !b.is_empty() {
        return Err(corrupt(path, "trailing bytes"));
    }
    let ckpt: Checkpoint =
        postcard::from_bytes(header).map_err(|e| corrupt(path, format!("header: {e}")))?;
    Ok((ckpt, aggs.to_vec()))
}

/// Encodes a de-duplication segment.
pub fn encode_segment(entries: &[(Minute, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 8 + entries.len() * 12 + 8);
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (m, h) in entries {
        out.extend_from_slice(&m.to_le_bytes());
        out.extend_from_slice(&h.to_le_bytes());
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Reads and validates a de-duplication segment.
pub fn read_segment(path: &Path) -> Result<Vec<(Minute, u64)>, CheckpointError> {
    let data = std::fs::read(path).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if data.len() < 24 || &data[..8] != SEGMENT_MAGIC {
        return Err(corrupt(path, "not a passpulse id segment"));
    }
    let (body, sum) = data.split_at(data.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
        return Err(corrupt(path, "checksum mismatch"));
    }
    let n = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes")) as usize;
    let entries = &body[16..];
    if entries.len() != n * 12 {
        return Err(corrupt(path, "length does not match the entry count"));
    }
    Ok(entries
        .chunks_exact(12)
        .map(|c| {
            (
                u32::from_le_bytes(c[..4].try_into().expect("4 bytes")),
                u64::from_le_bytes(c[4..].try_into().expect("8 bytes")),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoint {
            generation: 7,
            last_seq: 1234,
            events: 99,
            ..Default::default()
        };
        let bytes = c.encode(b"aggregates");
        let p = dir.path().join(Checkpoint::file_name(7));
        std::fs::write(&p, &bytes).unwrap();
        let (back, aggs) = read_checkpoint(&p).unwrap();
        assert_eq!((back.generation, back.last_seq, back.events), (7, 1234, 99));
        assert_eq!(aggs, b"aggregates");
        assert_eq!(
            Checkpoint::generation_of("checkpoint-0000000007.ckpt"),
            Some(7)
        );

        // torn: any prefix fails
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_checkpoint(&p).is_err());
        // one flipped bit fails
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        std::fs::write(&p, &flipped).unwrap();
        let e = read_checkpoint(&p).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }

    #[test]
    fn segments_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ids.bin");
        let entries = vec![(1, 10), (2, 20), (2, u64::MAX)];
        std::fs::write(&p, encode_segment(&entries)).unwrap();
        assert_eq!(read_segment(&p).unwrap(), entries);
        let mut bad = encode_segment(&entries);
        bad[17] ^= 0xff;
        std::fs::write(&p, bad).unwrap();
        assert!(read_segment(&p).is_err());
    }
}
