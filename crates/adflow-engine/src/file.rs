//! File mode: a [`FileSource`] over `DIR/<stream>.jsonl` and a [`FileSink`] writing every output
//! table as a changelog `OUT/<table>.jsonl`.

use crate::driver::{Poll, Source};
use crate::EngineError;
use adflow_model::event::{parse_event, ParseConfig};
use adflow_model::{Change, Position, RawMessage, Sink, SinkError, StreamKind, Table};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Lines read from one file before the source looks at which file to read next.
const CHUNK: usize = 1024;

struct StreamFile {
    stream: StreamKind,
    name: String,
    reader: BufReader<File>,
    line: u64,
    /// Event time of the last line of the last chunk that parsed; files are read in order of
    /// this value, so the four streams advance through event time together.
    head_ts: i64,
    done: bool,
}

/// Reads `DIR/{ad_events,orders,logistics,identity}.jsonl` (a missing file is an empty stream).
/// Worker `index` of `peers` takes the lines whose 0-based number `n` has `n % peers == index`;
/// every worker reads in the same order. The files are read a chunk at a time, always from the
/// file that is furthest behind in event time, so the watermark moves through the data in time
/// order even though the streams are separate files. Blank lines are skipped (they carry no
/// message); every other line becomes a message, malformed or not.
pub struct FileSource {
    files: Vec<StreamFile>,
    index: u64,
    peers: u64,
    parse: ParseConfig,
    buf: Vec<u8>,
}

impl FileSource {
    /// Opens the stream files of `dir` for worker `index` of `peers`.
    pub fn open(
        dir: &Path,
        index: usize,
        peers: usize,
        parse: ParseConfig,
    ) -> Result<Self, EngineError> {
        let mut files = Vec::new();
        for stream in StreamKind::ALL {
            let name = format!("{}.jsonl", stream.name());
            let path = dir.join(&name);
            match File::open(&path) {
                Ok(f) => files.push(StreamFile {
                    stream,
                    name,
                    reader: BufReader::with_capacity(1 << 20, f),
                    line: 0,
                    head_ts: i64::MIN,
                    done: false,
                }),
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
            parse,
            buf: Vec::new(),
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
                .filter(|f| !f.done)
                .min_by_key(|f| (f.head_ts, f.stream))
            else {
                break;
            };
            let mut last_line: Option<Vec<u8>> = None;
            for _ in 0..CHUNK {
                self.buf.clear();
                let n = f
                    .reader
                    .read_until(b'\n', &mut self.buf)
                    .map_err(|e| EngineError::Io {
                        path: f.name.clone(),
                        source: e,
                    })?;
                if n == 0 {
                    f.done = true;
                    break;
                }
                let n_line = f.line;
                f.line += 1;
                while matches!(self.buf.last(), Some(b'\n') | Some(b'\r')) {
                    self.buf.pop();
                }
                if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                if n_line % self.peers == self.index {
                    out.push(RawMessage {
                        stream: f.stream,
                        position: Position::File {
                            file: f.name.clone(),
                            line: n_line + 1,
                        },
                        payload: self.buf.clone(),
                    });
                }
                last_line = Some(std::mem::take(&mut self.buf));
            }
            if let Some(l) = last_line {
                if let Ok(e) = parse_event(f.stream, &l, &self.parse) {
                    f.head_ts = f.head_ts.max(e.ts);
                }
            }
        }
        if out.is_empty() && self.files.iter().all(|f| f.done) {
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
        for c in &changes {
            if let Some(w) = self.writers.get_mut(&c.row.table()) {
                let line = c.to_json_line();
                w.write_all(line.as_bytes())
                    .and_then(|_| w.write_all(b"\n"))
                    .map_err(|e| SinkError::Io {
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
