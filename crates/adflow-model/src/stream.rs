//! The four input streams of spec §1 and the position of a message in its source.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One of the four input streams. On Kafka each is a topic of the same name (with an optional
/// prefix); in file mode each is `DIR/<name>.jsonl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    AdEvents,
    Orders,
    Logistics,
    Identity,
}

impl StreamKind {
    /// All streams, in a fixed order.
    pub const ALL: [StreamKind; 4] = [
        StreamKind::AdEvents,
        StreamKind::Orders,
        StreamKind::Logistics,
        StreamKind::Identity,
    ];

    /// The stream's name: its file stem and its topic name (before any prefix).
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::AdEvents => "ad_events",
            StreamKind::Orders => "orders",
            StreamKind::Logistics => "logistics",
            StreamKind::Identity => "identity",
        }
    }

    /// Parses a stream name as written by [`StreamKind::name`].
    pub fn from_name(name: &str) -> Option<StreamKind> {
        StreamKind::ALL.into_iter().find(|s| s.name() == name)
    }

    /// A small dense index (0..4), handy for arrays indexed by stream.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a raw message came from; shown in `dead_letters.position`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Position {
    /// A line of a JSON Lines file (1-based line number).
    File { file: String, line: u64 },
    /// A Kafka message.
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// Anything else (an HTTP push, a test), described in words.
    Other(String),
}

impl fmt::Display for Position {
    /// `file:line` for files, `topic/partition/offset` for Kafka.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::File { file, line } => write!(f, "{file}:{line}"),
            Position::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "{topic}/{partition}/{offset}"),
            Position::Other(s) => f.write_str(s),
        }
    }
}

/// One message as received, before parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    pub stream: StreamKind,
    pub position: Position,
    pub payload: Vec<u8>,
}
