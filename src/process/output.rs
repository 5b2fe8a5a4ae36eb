//! A run's output: read line by line on the output thread, at a bounded rate, and logged.
//!
//! Lines longer than [`MAX_LINE`] are cut and marked, so a child that never prints a newline
//! cannot grow the daemon's memory; bytes that are not UTF-8 are shown lossily.

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::task::AbortOnDropHandle;

use crate::clock::{Clock, Instant};
use crate::handler::RunId;

/// The longest output line logged whole; longer lines are cut and marked.
pub const MAX_LINE: usize = 64 * 1024;
/// Output bytes a pump reads before it lets other tasks run.
const YIELD_EVERY: usize = 64 * 1024;
/// The most output a run's stream is read at, in bytes per second, beyond short bursts: far more
/// than any log needs, far less than a child writing as fast as it can (several GB/s), whose
/// pipe copying would otherwise take two cores' worth of CPU from the scheduler.
const OUTPUT_RATE: u64 = 128 * 1024 * 1024;
/// How far ahead of [`OUTPUT_RATE`] a stream may read in a burst.
const OUTPUT_BURST: Duration = Duration::from_millis(50);

/// How much of a run's output [`HeldOutput`] keeps (its last lines): what a failed run of a
/// `log = "failures"` job shows.
pub const HELD_OUTPUT: usize = 64 * 1024;

/// A run's output held until the run ends: instead of logged as it comes (`log = "failures"`,
/// logged only if the run fails), or besides, for the end of it the run history keeps
/// ([`HeldOutput::tail`]). Only its last lines are kept: [`HELD_OUTPUT`] bytes by default
/// ([`HeldOutput::new`] for another bound), and at least the last line.
#[derive(Debug)]
pub struct HeldOutput {
    /// The lines; a std lock, held only to push or take, never across an await.
    held: Mutex<Held>,
    /// The bytes of lines kept beyond the last one.
    limit: usize,
}

impl Default for HeldOutput {
    fn default() -> Self {
        HeldOutput::new(HELD_OUTPUT)
    }
}

#[derive(Debug, Default)]
struct Held {
    /// `(stream, line, cut)`, oldest first.
    lines: VecDeque<(&'static str, String, bool)>,
    /// The bytes of `lines`.
    bytes: usize,
    /// Lines let go to keep within the bound.
    dropped: u64,
}

impl HeldOutput {
    /// Holds up to `limit` bytes of a run's last lines (and always its last line).
    pub fn new(limit: usize) -> Self {
        HeldOutput {
            held: Mutex::default(),
            limit,
        }
    }

    fn push(&self, stream: &'static str, line: String, cut: bool) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.bytes += line.len();
        held.lines.push_back((stream, line, cut));
        while held.bytes > self.limit && held.lines.len() > 1 {
            if let Some((_, old, _)) = held.lines.pop_front() {
                held.bytes -= old.len();
                held.dropped += 1;
            }
        }
    }

    /// Logs the lines held, as they would have been logged when printed.
    pub fn emit(&self, job: &str, run_id: RunId) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(PoisonError::into_inner));
        if held.dropped > 0 {
            tracing::info!(target: "tickd::output", job = %job, run = %run_id, dropped = held.dropped, "[{} earlier lines of output not kept]", held.dropped);
        }
        for (stream, line, cut) in held.lines {
            emit(job, run_id, stream, line.as_bytes(), cut);
        }
    }
}

impl HeldOutput {
    /// The end of the output held, at most `limit` bytes of it: one line per line printed
    /// (stdout and stderr interleaved as they were read), cut at a character boundary at its
    /// start if it is longer. `None` if nothing was printed.
    pub fn tail(&self, limit: usize) -> Option<String> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.lines.is_empty() || limit == 0 {
            return None;
        }
        // From the newest line back, only as many lines as fit: the copy stays near `limit`.
        let mut taken = Vec::new();
        let mut bytes = 0;
        for (_, line, cut) in held.lines.iter().rev() {
            taken.push((line.strip_suffix('\r').unwrap_or(line), *cut));
            bytes += line.len() + 1;
            if bytes >= limit {
                break;
            }
        }
        let mut text = String::with_capacity(bytes.min(limit + 64));
        for (line, cut) in taken.into_iter().rev() {
            text.push_str(line);
            if cut {
                text.push_str(&format!(" [line cut at {MAX_LINE} bytes]"));
            }
            text.push('\n');
        }
        keep_end(&mut text, limit);
        Some(text)
    }
}

/// Cuts `text` to its last `limit` bytes at most, starting at a character boundary.
pub fn keep_end(text: &mut String, limit: usize) {
    let mut start = text.len().saturating_sub(limit);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.drain(..start);
}

/// Where a run's output lines go.
#[derive(Debug, Clone)]
pub enum OutputSink {
    /// To the log as they come.
    Log,
    /// Into the run's [`HeldOutput`].
    Hold(Arc<HeldOutput>),
    /// To the log as they come, and into the run's [`HeldOutput`] (for the run history).
    LogAndHold(Arc<HeldOutput>),
}

/// Starts logging a run's `stdout` and `stderr` pipes (those it has) on the output thread. The
/// future resolves once both have reached EOF; dropping it stops the reading.
pub(super) fn log_output(
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    job: &str,
    run_id: RunId,
    clock: &Clock,
    sink: &OutputSink,
) -> impl Future<Output = ()> + 'static {
    // Started now, not when the future is first polled: the child is already writing.
    let stdout = stdout.map(|pipe| spawn_pump(pipe, job, run_id, "stdout", clock, sink.clone()));
    let stderr = stderr.map(|pipe| spawn_pump(pipe, job, run_id, "stderr", clock, sink.clone()));
    async move {
        if let Some(task) = stdout {
            let _ = task.await;
        }
        if let Some(task) = stderr {
            let _ = task.await;
        }
    }
}

/// A task that logs `pipe`, on the output thread when there is one; aborted when dropped.
fn spawn_pump(
    pipe: OwnedFd,
    job: &str,
    run_id: RunId,
    stream: &'static str,
    clock: &Clock,
    sink: OutputSink,
) -> AbortOnDropHandle<()> {
    let job = job.to_owned();
    let clock = clock.clone();
    let task = async move { pump(pipe, &job, run_id, stream, clock, sink).await };
    AbortOnDropHandle::new(match output_runtime() {
        Some(output) => output.spawn(task),
        None => tokio::spawn(task),
    })
}

/// The runtime of the output thread, which reads and logs every child's output, so that reading,
/// formatting and writing log lines never holds up the workers that run the jobs' fires. Each
/// stream is read at up to [`OUTPUT_RATE`]; a child that writes faster waits on its full pipe.
/// `None` if the thread could not be started: output is then read on the caller's runtime.
fn output_runtime() -> Option<&'static tokio::runtime::Handle> {
    start_output_thread()
}

/// Starts the output thread (see `output_runtime`) if it is not running yet. The run environment
/// calls it at start, so the thread and its descriptors exist before the first run.
pub fn start_output_thread() -> Option<&'static tokio::runtime::Handle> {
    static OUTPUT: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    OUTPUT.get_or_init(spawn_output_thread).as_ref()
}

/// Starts a thread that runs a current-thread runtime forever, and returns its handle.
fn spawn_output_thread() -> Option<tokio::runtime::Handle> {
    let (handle_tx, handle_rx) = std_mpsc::channel();
    let started = std::thread::Builder::new()
        .name("tickd-output".to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(std::future::pending::<()>());
                }
                Err(err) => {
                    let _ = handle_tx.send(Err(err));
                }
            }
        });
    match started.map(|_| handle_rx.recv()) {
        Ok(Ok(Ok(handle))) => Some(handle),
        Ok(Ok(Err(err))) | Err(err) => {
            tracing::warn!(
                "cannot start the output thread, reading output on the scheduler's threads: {err}"
            );
            None
        }
        Ok(Err(_)) => None,
    }
}

/// Logs a child's output line by line (see [`Lines`]), paced by [`Pace`].
async fn pump(
    pipe: OwnedFd,
    job: &str,
    run_id: RunId,
    stream: &'static str,
    clock: Clock,
    sink: OutputSink,
) {
    let reader = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
        Ok(reader) => reader,
        Err(err) => {
            tracing::warn!(job = %job, run = %run_id, stream = %stream, "cannot read output: {err}");
            return;
        }
    };
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let log = |line: &[u8], cut: bool| match &sink {
        OutputSink::Log => emit(job, run_id, stream, line, cut),
        OutputSink::Hold(held) => {
            held.push(stream, String::from_utf8_lossy(line).into_owned(), cut)
        }
        OutputSink::LogAndHold(held) => {
            emit(job, run_id, stream, line, cut);
            held.push(stream, String::from_utf8_lossy(line).into_owned(), cut)
        }
    };
    let mut lines = Lines::default();
    let mut pace = Pace::new(clock.now());
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(err) => {
                tracing::warn!(job = %job, run = %run_id, stream = %stream, "cannot read output: {err}");
                break;
            }
        };
        let consumed = lines.feed(chunk, log);
        reader.consume(consumed);
        pace.read(consumed, &clock).await;
    }
    lines.finish(log);
}

/// A stream cut into lines of at most [`MAX_LINE`] bytes: the line so far, and whether the rest
/// of a line that was already cut is being skipped.
#[derive(Debug, Default)]
struct Lines {
    line: Vec<u8>,
    /// True while skipping the rest of a line that was already cut.
    cutting: bool,
}

impl Lines {
    /// Takes `chunk` up to and including its first newline, and `log`s the line this completes or
    /// cuts (`true`: cut); returns how many bytes it took.
    fn feed(&mut self, chunk: &[u8], log: impl Fn(&[u8], bool)) -> usize {
        let (piece, newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        if !self.cutting {
            let room = MAX_LINE - self.line.len();
            self.line.extend_from_slice(&piece[..piece.len().min(room)]);
            if piece.len() > room {
                log(&self.line, true);
                self.line.clear();
                self.cutting = true;
            }
        }
        if newline {
            if !self.cutting {
                log(&self.line, false);
            }
            self.line.clear();
            self.cutting = false;
        }
        piece.len() + usize::from(newline)
    }

    /// Logs the last line of a stream that did not end in a newline.
    fn finish(self, log: impl Fn(&[u8], bool)) {
        if !self.line.is_empty() {
            log(&self.line, false);
        }
    }
}

/// A stream's pacing: it yields every [`YIELD_EVERY`] bytes, and sleeps while it is more than
/// [`OUTPUT_BURST`] ahead of [`OUTPUT_RATE`].
#[derive(Debug)]
struct Pace {
    /// Bytes read since the last yield.
    since_yield: usize,
    /// When the stream's output so far would have been read at exactly OUTPUT_RATE (a GCRA
    /// token bucket).
    paced_until: Instant,
}

impl Pace {
    fn new(now: Instant) -> Self {
        Pace {
            since_yield: 0,
            paced_until: now,
        }
    }

    /// Counts `bytes` read, and yields or sleeps when they are due.
    async fn read(&mut self, bytes: usize, clock: &Clock) {
        // A child that floods its output would otherwise keep the output thread to itself for
        // milliseconds between yields (tokio's budget counts reads, not bytes): let the other
        // runs' output through every 64 KiB.
        self.since_yield += bytes;
        if self.since_yield < YIELD_EVERY {
            return;
        }
        self.paced_until = self.paced_until.max(clock.now())
            + Duration::from_secs_f64(self.since_yield as f64 / OUTPUT_RATE as f64);
        self.since_yield = 0;
        let allowed = self.paced_until.checked_sub(OUTPUT_BURST);
        if allowed.is_some_and(|at| at > clock.now()) {
            // A flood: the child waits on its full pipe meanwhile, instead of taking the CPU
            // from the scheduler.
            clock.sleep_until(self.paced_until - OUTPUT_BURST).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

fn emit(job: &str, run_id: RunId, stream: &str, line: &[u8], cut: bool) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    if cut {
        tracing::info!(target: "tickd::output", job = %job, run = %run_id, stream = %stream, "{text} [line cut at {MAX_LINE} bytes]");
    } else {
        tracing::info!(target: "tickd::output", job = %job, run = %run_id, stream = %stream, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn held_output_keeps_only_its_last_lines() {
        let held = HeldOutput::default();
        let line = "x".repeat(1000);
        for _ in 0..100 {
            held.push("stdout", line.clone(), false);
        }
        let inner = held.held.lock().expect("lock");
        assert!(inner.bytes <= HELD_OUTPUT, "{}", inner.bytes);
        assert_eq!(inner.lines.len(), HELD_OUTPUT / 1000);
        assert_eq!(inner.dropped, 100 - inner.lines.len() as u64);
    }

    #[test]
    fn the_tail_is_the_last_bytes_of_the_output_cut_at_a_character() {
        let held = HeldOutput::new(100);
        assert_eq!(held.tail(10), None, "nothing printed");
        for i in 0..50 {
            held.push("stdout", format!("line {i}"), false);
        }
        held.push("stderr", "é-end\r".to_owned(), false);
        let tail = held.tail(16).expect("tail");
        assert!(tail.len() <= 16, "{tail:?}");
        assert!(tail.ends_with("line 49\né-end\n"), "{tail:?}");
        // A cut in the middle of "é" starts after it.
        assert_eq!(held.tail(7).expect("tail"), "é-end\n");
        assert_eq!(held.tail(6).expect("tail"), "-end\n");
        assert_eq!(
            held.tail(1000).expect("tail").lines().count(),
            14,
            "the bound of 100 bytes"
        );
    }

    #[test]
    fn a_long_line_is_cut_once_and_the_next_line_is_whole() {
        let logged = RefCell::new(Vec::new());
        let log = |line: &[u8], cut: bool| logged.borrow_mut().push((line.len(), cut));
        let mut lines = Lines::default();
        let long = vec![b'a'; MAX_LINE + 10];
        let mut stream: Vec<u8> = [long.as_slice(), b"b\nc\n", b"tail"].concat();
        while !stream.is_empty() {
            let taken = lines.feed(&stream, log);
            stream.drain(..taken);
        }
        lines.finish(log);
        assert_eq!(
            logged.into_inner(),
            [(MAX_LINE, true), (1, false), (4, false)]
        );
    }
}
