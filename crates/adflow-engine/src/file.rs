//! File mode: a [`FileSource`] over `DIR/<stream>.jsonl` and a [`FileSink`] writing every output
//! table as a changelog `OUT/<table>.jsonl`.

use crate::driver::{Poll, Source};
use crate::EngineError;
use adflow_model::event::{peek_ts, ParseConfig};
use adflow_model::{Change, Position, RawMessage, Sink, SinkError, StreamKind, Table};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

struct StreamFile {
    stream: StreamKind,
    name: String,
    reader: BufReader<File>,
    line: u64,
    /// The next line (1-based number, bytes) and its event time: its own `ts` when it can be
    /// read, else the previous line's.
    next: Option<(i64, u64, Vec<u8>)>,
    last_ts: i64,
}

impl StreamFile {
    /// Reads the next line into `next` (or leaves it empty at the end).
    fn fill(&mut self, zone: i32) -> Result<(), EngineError> {
        self.next = None;
        let mut buf = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| EngineError::Io {
                path: self.name.clone(),
                source: e,
            })?;
        if n == 0 {
            return Ok(());
        }
        self.line += 1;
        while matches!(buf.last(), Some(b'\n') | Some(b'\r')) {
            buf.pop();
        }
        if let Some(ts) = peek_ts(&buf, zone) {
            self.last_ts = self.last_ts.max(ts);
        }
        self.next = Some((self.last_ts, self.line, buf));
        Ok(())
    }
}

/// Reads `DIR/{ad_events,orders,logistics,identity}.jsonl` (a missing file is an empty stream).
/// Worker `index` of `peers` takes the lines whose 0-based number `n` has `n % peers == index`;
/// every worker reads in the same order. The four files are merged line by line in event-time
/// order (by a cheap look at each line's `ts`), so the watermark moves through the data in time
/// order even though the streams are separate files: a sparse stream never pushes the watermark
/// ahead of a dense one. Every line becomes a message, malformed (or blank) or not; only the
/// newline that ends the file does not start another line.
pub struct FileSource {
    files: Vec<StreamFile>,
    index: u64,
    peers: u64,
    zone: i32,
}

impl FileSource {
    /// Opens the stream files of `dir` for worker `index` of `peers`.
    pub fn open(
        dir: &Path,
        index: usize,
        peers: usize,
        parse: ParseConfig,
    ) -> Result<Self, EngineError> {
        let zone = parse.zone_offset_minutes;
        let mut files = Vec::new();
        for stream in StreamKind::ALL {
            let name = format!("{}.jsonl", stream.name());
            let path = dir.join(&name);
            match File::open(&path) {
                Ok(f) => {
                    let mut sf = StreamFile {
                        stream,
                        name,
                        reader: BufReader::with_capacity(1 << 20, f),
                        line: 0,
                        next: None,
                        last_ts: i64::MIN,
                    };
                    sf.fill(zone)?;
                    files.push(sf);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(EngineError::Io {
                        path: path.display().to_string(),
                        source: e,
                    })
                }
            }
        }
        Ok(FileSource {
            files,
            index: index as u64,
            peers: peers.max(1) as u64,
            zone,
        })
    }
}

impl Source for FileSource {
    fn poll(&mut self, max: usize) -> Result<Poll, EngineError> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(f) = self
                .files
                .iter_mut()
                .filter(|f| f.next.is_some())
                .min_by_key(|f| (f.next.as_ref().map(|n| n.0), f.stream))
            else {
                break;
            };
            if let Some((_, line, payload)) = f.next.take() {
                if (line - 1) % self.peers == self.index {
                    out.push(RawMessage {
                        stream: f.stream,
                        position: Position::File {
                            file: f.name.clone(),
                            line,
                        },
                        payload,
                    });
                }
            }
            f.fill(self.zone)?;
        }
        if out.is_empty() && self.files.iter().all(|f| f.next.is_none()) {
            return Ok(Poll::Finished);
        }
        Ok(Poll::Messages(out))
    }
}

/// Writes each output table as a changelog `OUT/<table>.jsonl`: one JSON object per change with
/// all of the row's fields plus `version` and `sign`. The files are created (truncated) when the
/// sink is opened, so every table has a file even when it stays empty. `flush` syncs them to
/// disk; only then does the durable frontier advance.
pub struct FileSink {
    dir: PathBuf,
    writers: HashMap<Table, BufWriter<File>>,
    received: i64,
    durable: i64,
    written: u64,
}

impl FileSink {
    /// Creates `dir` if needed and truncates every table's file.
    pub fn create(dir: &Path) -> Result<Self, SinkError> {
        let io = |e| SinkError::Io {
            sink: "file".into(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut writers = HashMap::new();
        for table in Table::ALL {
            let f = File::create(dir.join(format!("{}.jsonl", table.name()))).map_err(io)?;
            writers.insert(table, BufWriter::with_capacity(1 << 18, f));
        }
        Ok(FileSink {
            dir: dir.to_path_buf(),
            writers,
            received: 0,
            durable: 0,
            written: 0,
        })
    }

    /// Number of changelog lines written so far.
    pub fn lines_written(&self) -> u64 {
        self.written
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        "file"
    }

    fn write(&mut self, changes: Vec<Change>, frontier: i64) -> Result<(), SinkError> {
        let mut line = Vec::with_capacity(512);
        for c in &changes {
            if let Some(w) = self.writers.get_mut(&c.row.table()) {
                line.clear();
                c.write_json_line(&mut line);
                w.write_all(&line).map_err(|e| SinkError::Io {
                    sink: "file".into(),
                    source: e,
                })?;
                self.written += 1;
            }
        }
        self.received = self.received.max(frontier);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        for w in self.writers.values_mut() {
            w.flush()
                .and_then(|_| w.get_ref().sync_data())
                .map_err(|e| SinkError::Io {
                    sink: "file".into(),
                    source: e,
                })?;
        }
        self.durable = self.received;
        Ok(())
    }

    fn durable_frontier(&self) -> i64 {
        self.durable
    }
}
