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
    /// Reads this worker's next line into `next` (or leaves it empty at the end): the line
    /// whose 0-based number `n` has `n % peers == index`. Other workers' lines are skipped
    /// without being copied or looked at.
    fn fill(&mut self, zone: i32, index: u64, peers: u64) -> Result<(), EngineError> {
        self.next = None;
        let io = |name: &str, e| EngineError::Io {
            path: name.to_string(),
            source: e,
        };
        while self.line % peers != index {
            let n = self
                .reader
                .skip_until(b'\n')
                .map_err(|e| io(&self.name, e))?;
            if n == 0 {
                return Ok(());
            }
            self.line += 1;
        }
        let mut buf = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| io(&self.name, e))?;
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
/// Worker `index` of `peers` takes the lines whose 0-based number `n` has `n % peers == index`
/// (skipping the others unparsed). Each worker merges its lines of the four files line by line
/// in event-time order (by a cheap look at each line's `ts`), so the watermark moves through the
/// data in time order even though the streams are separate files: a sparse stream never pushes
/// the watermark ahead of a dense one. Every line becomes a message, malformed (or blank) or not; only the
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
                    sf.fill(zone, index as u64, peers.max(1) as u64)?;
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
                out.push(RawMessage {
                    stream: f.stream,
                    position: Position::File {
                        file: f.name.clone(),
                        line,
                    },
                    payload,
                });
            }
            f.fill(self.zone, self.index, self.peers)?;
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
    /// Resumable sinks record progress in `OUT/_progress.json` at every flush.
    resumable: bool,
    /// What an earlier run stored (see [`FileSink::resume`]).
    resumed_from: i64,
    /// The engine checkpoint written with the next progress record / read at resume.
    checkpoint: Option<String>,
    resumed_checkpoint: Option<String>,
    /// Resumable: the checkpoints stored on disk (newest first) until `resume_to` picks one.
    points: Vec<Option<String>>,
    stored: Vec<Point>,
    /// The latest durable point and the one before it (written with the next progress record).
    last: Option<Point>,
    previous: Option<Point>,
    /// Write the buffer out after every batch (resumable sinks: live mode's freshness).
    visible: bool,
    /// The flush begun by `start_flush`: the thread that syncs the files and stores the
    /// progress record, and the frontier that is durable once it has.
    syncing: Option<(std::thread::JoinHandle<Result<(), SinkError>>, i64)>,
}

/// One durable point of a resumable file sink: every change with `version < frontier` is in
/// the first `lengths[table]` bytes of `<table>.jsonl`, and nothing else is.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Point {
    frontier: i64,
    lengths: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    checkpoint: Option<String>,
}

impl Point {
    /// The empty state (before anything was stored).
    fn empty() -> Point {
        Point {
            frontier: i64::MIN,
            lengths: Default::default(),
            checkpoint: None,
        }
    }
}

/// `OUT/_progress.json`: the latest durable point and the one before it (a cluster that
/// restarts may resume from the previous one when another process had not stored the latest
/// yet, see `adflow_engine::live`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Progress {
    #[serde(flatten)]
    latest: Point,
    #[serde(default)]
    previous: Option<Point>,
}

const PROGRESS_FILE: &str = "_progress.json";

/// An i/o error of the file sink on `path` (named in the message).
fn io_err_at(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |e| SinkError::Io {
        sink: format!("file {}", path.display()),
        source: e,
    }
}

/// The error a fail point of the file sink injects (`FAILPOINTS`, see docs/operations.md;
/// only when `FAILPOINTS` configures `name`): logged as it fires, so a test can tell an
/// injected fault that fired from one that was lost on the way.
fn injected_fault(name: &str) -> std::io::Error {
    tracing::warn!(fail_point = name, "fail point fired");
    std::io::Error::other(format!("injected fault (fail point {name})"))
}

/// The changelog file of `table` in `dir`.
fn table_path(dir: &Path, table: Table) -> PathBuf {
    dir.join(format!("{}.jsonl", table.name()))
}

impl FileSink {
    /// Creates `dir` if needed and truncates every table's file.
    pub fn create(dir: &Path) -> Result<Self, SinkError> {
        std::fs::create_dir_all(dir).map_err(io_err_at(dir))?;
        let mut writers = HashMap::new();
        for table in Table::ALL {
            let path = table_path(dir, table);
            let f = File::create(&path).map_err(io_err_at(&path))?;
            writers.insert(table, BufWriter::with_capacity(1 << 18, f));
        }
        Ok(FileSink {
            dir: dir.to_path_buf(),
            writers,
            received: 0,
            durable: 0,
            written: 0,
            resumable: false,
            resumed_from: i64::MIN,
            checkpoint: None,
            resumed_checkpoint: None,
            points: Vec::new(),
            stored: Vec::new(),
            last: None,
            previous: None,
            visible: false,
            syncing: None,
        })
    }

    /// A sink for live mode that survives restarts. When `dir/_progress.json` exists (written
    /// by an earlier run at its last flush), every table file is cut back to the length it had
    /// then — dropping lines written after the last durable point — and the sink reports that
    /// run's frontier through [`Sink::resume_frontier`], so a replaying engine does not write
    /// those changes twice. Otherwise it starts empty like [`FileSink::create`]. Every flush
    /// updates `_progress.json` (written to a temporary file, synced, renamed).
    pub fn resume(dir: &Path) -> Result<Self, SinkError> {
        let mut sink = FileSink::open_resumable(dir)?;
        let latest = sink.points.first().cloned().flatten();
        sink.resume_to(latest.as_deref())?;
        Ok(sink)
    }

    /// Opens a resumable sink without touching its data yet: [`Sink::resume_points`] lists the
    /// checkpoints it holds (the latest and the one before it), and [`Sink::resume_to`] cuts
    /// the files back to one of them before anything is written. Every write is made visible
    /// to readers at once (the buffer is written out after each batch, not synced); `flush`
    /// makes it durable.
    pub fn open_resumable(dir: &Path) -> Result<Self, SinkError> {
        std::fs::create_dir_all(dir).map_err(io_err_at(dir))?;
        let path = dir.join(PROGRESS_FILE);
        let progress =
            match std::fs::read(&path) {
                Ok(bytes) => Some(serde_json::from_slice::<Progress>(&bytes).map_err(|e| {
                    SinkError::Other {
                        sink: "file".into(),
                        message: format!("{}: {e}", path.display()),
                    }
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err_at(&path)(e)),
            };
        let stored: Vec<Point> = match progress {
            None => vec![Point::empty()],
            Some(p) => std::iter::once(p.latest).chain(p.previous).collect(),
        };
        Ok(FileSink {
            dir: dir.to_path_buf(),
            writers: HashMap::new(),
            received: i64::MIN,
            durable: i64::MIN,
            written: 0,
            resumable: true,
            resumed_from: i64::MIN,
            checkpoint: None,
            resumed_checkpoint: None,
            points: stored.iter().map(|p| p.checkpoint.clone()).collect(),
            stored,
            last: None,
            previous: None,
            visible: true,
            syncing: None,
        })
    }

    /// Cuts every table file back to `point` and opens it for appending.
    fn restore(&mut self, point: &Point) -> Result<(), SinkError> {
        let mut writers = HashMap::new();
        for table in Table::ALL {
            let file = table_path(&self.dir, table);
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .map_err(io_err_at(&file))?;
            let keep = point.lengths.get(table.name()).copied().unwrap_or(0);
            let len = f.metadata().map_err(io_err_at(&file))?.len();
            if len < keep {
                return Err(SinkError::Other {
                    sink: "file".into(),
                    message: format!(
                        "{} is shorter ({len} bytes) than its recorded progress ({keep} bytes)",
                        file.display()
                    ),
                });
            }
            if len > keep {
                tracing::info!(file = %file.display(), dropped = len - keep, "dropping changes written after the resumed durable point");
                f.set_len(keep).map_err(io_err_at(&file))?;
                f.sync_data().map_err(io_err_at(&file))?;
            }
            writers.insert(table, BufWriter::with_capacity(1 << 18, f));
        }
        self.writers = writers;
        self.received = point.frontier;
        self.durable = point.frontier;
        self.resumed_from = point.frontier;
        self.checkpoint = point.checkpoint.clone();
        self.resumed_checkpoint = point.checkpoint.clone();
        self.last = Some(point.clone());
        tracing::info!(dir = %self.dir.display(), frontier = point.frontier, "file sink resumes");
        Ok(())
    }

    /// The progress record of the point reached now (the files' lengths, the frontier and
    /// checkpoint received), to be stored once the files are synced; the sink takes it as its
    /// latest point (the one before it becomes the previous).
    fn next_progress(&mut self) -> std::io::Result<Vec<u8>> {
        let mut lengths = std::collections::BTreeMap::new();
        for (table, w) in &self.writers {
            lengths.insert(table.name().to_string(), w.get_ref().metadata()?.len());
        }
        let latest = Point {
            frontier: self.received,
            lengths,
            checkpoint: self.checkpoint.clone(),
        };
        // A flush that stores the same checkpoint again replaces the latest point; a new
        // checkpoint keeps the latest as the previous one.
        let previous = match self.last.take() {
            Some(l) if l.checkpoint.is_some() && l.checkpoint == latest.checkpoint => {
                self.previous.take()
            }
            Some(l) => Some(l),
            None => Some(Point::empty()),
        };
        let p = Progress {
            latest: latest.clone(),
            previous: previous.clone(),
        };
        let bytes = serde_json::to_vec(&p).map_err(std::io::Error::other)?;
        self.previous = previous;
        self.last = Some(latest);
        Ok(bytes)
    }

    /// Stores a progress record made by [`FileSink::next_progress`] (temporary file, sync,
    /// rename, sync of the directory).
    fn store_progress(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
        adflow_model::durable::replace_file_with(&dir.join(PROGRESS_FILE), bytes, || {
            // Fault tests: the progress record is written but never takes the place of the last.
            fail::fail_point!("sink::file::progress", |_| Err(injected_fault(
                "sink::file::progress"
            )));
            Ok(())
        })
    }

    /// Waits for the flush begun by `start_flush`, if any.
    fn finish_flush(&mut self) -> Result<(), SinkError> {
        if let Some((handle, frontier)) = self.syncing.take() {
            handle.join().map_err(|_| SinkError::Other {
                sink: format!("file {}", self.dir.display()),
                message: "the sync thread panicked".into(),
            })??;
            self.durable = self.durable.max(frontier);
        }
        Ok(())
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
        // Fault tests (once per call, not per change): the write of this batch fails.
        fail::fail_point!("sink::file::write", |_| {
            let table = changes.first().map_or(Table::ALL[0], |c| c.row.table());
            Err(io_err_at(&table_path(&self.dir, table))(injected_fault(
                "sink::file::write",
            )))
        });
        let mut line = Vec::with_capacity(512);
        for c in &changes {
            let table = c.row.table();
            if let Some(w) = self.writers.get_mut(&table) {
                line.clear();
                c.write_json_line(&mut line);
                w.write_all(&line)
                    .map_err(|e| io_err_at(&table_path(&self.dir, table))(e))?;
                self.written += 1;
            }
        }
        if self.visible && !changes.is_empty() {
            for (&table, w) in self.writers.iter_mut() {
                w.flush()
                    .map_err(|e| io_err_at(&table_path(&self.dir, table))(e))?;
            }
        }
        self.received = self.received.max(frontier);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.start_flush()?;
        self.finish_flush()
    }

    /// Writes the buffers out (so the lengths are known) and syncs the files and stores the
    /// progress record on a thread of its own: the worker that hands this sink its changes
    /// does not wait for the disk (a sync behind a busy disk took up to 100 ms). Changes
    /// written meanwhile go after the recorded lengths and are not part of this flush.
    fn start_flush(&mut self) -> Result<(), SinkError> {
        // Fault tests: making the tables durable fails (as a failed sync of the first table).
        fail::fail_point!("sink::file::flush", |_| Err(io_err_at(&table_path(
            &self.dir,
            Table::ALL[0]
        ))(injected_fault(
            "sink::file::flush"
        ))));
        self.finish_flush()?;
        let mut files = Vec::with_capacity(self.writers.len());
        for (&table, w) in self.writers.iter_mut() {
            let path = table_path(&self.dir, table);
            w.flush().map_err(io_err_at(&path))?;
            let f = w.get_ref().try_clone().map_err(io_err_at(&path))?;
            files.push((path, f));
        }
        let progress = if self.resumable {
            let path = self.dir.join(PROGRESS_FILE);
            Some(self.next_progress().map_err(io_err_at(&path))?)
        } else {
            None
        };
        let dir = self.dir.clone();
        let handle = std::thread::Builder::new()
            .name("file-sink-sync".into())
            .spawn(move || -> Result<(), SinkError> {
                for (path, f) in &files {
                    f.sync_data().map_err(io_err_at(path))?;
                }
                if let Some(bytes) = progress {
                    let path = dir.join(PROGRESS_FILE);
                    FileSink::store_progress(&dir, &bytes).map_err(io_err_at(&path))?;
                }
                Ok(())
            })
            .map_err(io_err_at(&self.dir))?;
        self.syncing = Some((handle, self.received));
        Ok(())
    }

    fn flush_done(&mut self) -> Result<bool, SinkError> {
        match &self.syncing {
            Some((handle, _)) if !handle.is_finished() => Ok(false),
            _ => self.finish_flush().map(|()| true),
        }
    }

    fn durable_frontier(&self) -> i64 {
        self.durable
    }

    fn resume_frontier(&self, _table: Table) -> i64 {
        self.resumed_from
    }

    fn set_checkpoint(&mut self, checkpoint: &str) {
        self.checkpoint = Some(checkpoint.to_string());
    }

    fn resume_checkpoint(&self) -> Option<String> {
        self.resumed_checkpoint.clone()
    }

    fn resumable(&self) -> bool {
        self.resumable
    }

    fn resume_points(&self) -> Vec<Option<String>> {
        if self.writers.is_empty() {
            self.points.clone()
        } else {
            vec![self.resumed_checkpoint.clone()]
        }
    }

    /// Cuts the files back to the stored point with this checkpoint (`None`: to empty files;
    /// also the point of a progress record written without a checkpoint).
    fn resume_to(&mut self, checkpoint: Option<&str>) -> Result<(), SinkError> {
        if !self.writers.is_empty() {
            return if checkpoint == self.resumed_checkpoint.as_deref() {
                Ok(())
            } else {
                Err(SinkError::Other {
                    sink: "file".into(),
                    message: "already resumed from another checkpoint".into(),
                })
            };
        }
        let point = match checkpoint {
            None => self
                .stored
                .iter()
                .find(|p| p.checkpoint.is_none())
                .cloned()
                .unwrap_or_else(Point::empty),
            Some(c) => self
                .stored
                .iter()
                .find(|p| p.checkpoint.as_deref() == Some(c))
                .cloned()
                .ok_or_else(|| SinkError::Other {
                    sink: "file".into(),
                    message: format!(
                        "{} holds no durable point for checkpoint {c}",
                        self.dir.display()
                    ),
                })?,
        };
        let point = if checkpoint.is_none() && point.frontier == i64::MIN {
            Point::empty()
        } else {
            point
        };
        self.restore(&point)?;
        if checkpoint.is_none() && point.frontier == i64::MIN {
            self.last = None;
        }
        self.stored.clear();
        self.points.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adflow_model::output::DeadLetterRow;

    fn change(n: i64) -> Change {
        Change {
            row: adflow_model::OutputRow::DeadLetter(DeadLetterRow {
                stream: "orders".into(),
                position: format!("orders.jsonl:{n}"),
                raw: "x".into(),
                reason: "r".into(),
                seen_ts: 0,
            }),
            version: n,
            sign: 1,
        }
    }

    fn lines(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("dead_letters.jsonl"))
            .unwrap()
            .lines()
            .count()
    }

    #[test]
    fn resumable_sink_keeps_its_previous_durable_point() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut s = FileSink::open_resumable(dir).unwrap();
        assert_eq!(s.resume_points(), vec![None]);
        s.resume_to(None).unwrap();
        for (round, upto) in [("cp1", 10), ("cp2", 20)] {
            let from = upto - 10;
            s.write((from..upto).map(change).collect(), upto).unwrap();
            s.set_checkpoint(round);
            s.flush().unwrap();
        }
        // Written after the last flush: not durable.
        s.write((20..25).map(change).collect(), 25).unwrap();
        drop(s);
        assert_eq!(lines(dir), 25);

        let s = FileSink::open_resumable(dir).unwrap();
        assert_eq!(
            s.resume_points(),
            vec![Some("cp2".to_string()), Some("cp1".to_string())]
        );
        drop(s);
        // Back to the previous point: the files are cut to it.
        let mut s = FileSink::open_resumable(dir).unwrap();
        s.resume_to(Some("cp1")).unwrap();
        assert_eq!(lines(dir), 10);
        assert_eq!(s.resume_frontier(Table::DeadLetters), 10);
        assert_eq!(s.resume_checkpoint().as_deref(), Some("cp1"));
        s.write((10..20).map(change).collect(), 20).unwrap();
        s.set_checkpoint("cp2b");
        s.flush().unwrap();
        drop(s);
        let s = FileSink::open_resumable(dir).unwrap();
        assert_eq!(
            s.resume_points(),
            vec![Some("cp2b".to_string()), Some("cp1".to_string())]
        );
        // A point it does not hold is an error, not a silent restart.
        let mut s = FileSink::open_resumable(dir).unwrap();
        assert!(s.resume_to(Some("cp0")).is_err());
    }

    #[test]
    fn a_background_flush_stores_the_point_it_started_at() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut s = FileSink::open_resumable(dir).unwrap();
        s.resume_to(None).unwrap();
        s.write((0..10).map(change).collect(), 10).unwrap();
        s.set_checkpoint("cp1");
        s.start_flush().unwrap();
        // Handed over while the flush runs: visible, not part of it.
        s.write((10..15).map(change).collect(), 15).unwrap();
        assert_eq!(lines(dir), 15);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !s.flush_done().unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "the flush never completed"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(s.durable_frontier(), 10);
        assert!(s.flush_done().unwrap(), "done stays done");
        drop(s);

        let mut s = FileSink::open_resumable(dir).unwrap();
        assert_eq!(s.resume_points(), vec![Some("cp1".to_string()), None]);
        s.resume_to(Some("cp1")).unwrap();
        assert_eq!(lines(dir), 10);
        assert_eq!(s.resume_frontier(Table::DeadLetters), 10);
    }
}
