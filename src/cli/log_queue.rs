//! The log's queue and writer thread: every line is appended to one shared buffer, and the
//! `tickd-log` thread writes the buffer out, a burst's lines in one write.
//!
//! Written here rather than taken from `tracing-appender`, whose non-blocking writer sends each
//! line through a channel to its thread, waking it line by line, and gives each line a write(2)
//! of its own: when 1000 jobs fire at once (3000 lines), that thread took the second core from
//! the jobs exactly when they were due. Here a burst costs one wake-up, after which the thread
//! (in the daemon) waits [`GATHER`] for the rest of it, then writes whole lines, up to
//! [`WRITE_CHUNK`] bytes at a time.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// How many bytes of lines the queue holds before new lines are dropped (and counted): the
/// lines of some 9,000 runs at once fit (three lines of about 150 bytes each), while a stderr
/// nobody reads costs at most twice this much (the queue, and the burst the writer is stuck on).
const MAX_QUEUED_BYTES: usize = 4 << 20;

/// How long the daemon's writer lets a burst of lines gather after its first line: the jobs due
/// at one instant log together, and the thread keeps off the CPU while they start. (Lines of an
/// `output = "inherit"` child written straight to stderr meanwhile come before them.)
pub(crate) const GATHER: Duration = Duration::from_millis(5);

/// The most the writer hands to one write(2), in whole lines: `PIPE_BUF`, so that on a pipe
/// shared with other writers (children with `output = "inherit"`, journald's stream) a line is
/// never split by theirs, as when each line had a write of its own.
const WRITE_CHUNK: usize = 4096;

/// The capacity a burst's buffer keeps for the next one: the loggers then append to a buffer
/// that does not regrow at every burst (1000 jobs' three lines each are about 450 KB).
const KEPT_CAPACITY: usize = 1 << 20;

/// How long [`LogGuard`]'s drop waits for the last lines to be written (a stderr that blocks
/// would otherwise hold the exit).
const FLUSH_BOUND: Duration = Duration::from_secs(1);

/// The writing end, for tracing's `fmt` layer: each `write` it makes is one formatted line.
#[derive(Debug, Clone)]
pub(crate) struct LogQueue {
    shared: Arc<Shared>,
}

/// Flushes the queue when dropped, waiting at most [`FLUSH_BOUND`].
#[derive(Debug)]
pub(crate) struct LogGuard {
    shared: Arc<Shared>,
    written: std::sync::mpsc::Receiver<()>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the first line lands in an empty queue, and at close.
    woken: Condvar,
    /// Lines that did not fit, ever.
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    lines: Vec<u8>,
    closed: bool,
}

impl LogQueue {
    /// A queue whose lines the `tickd-log` thread writes to `out`, each burst `gather` after its
    /// first line. After each write, when lines were dropped since the last call, that thread
    /// calls `on_drops` with the total so far.
    pub(crate) fn start(
        out: impl Write + Send + 'static,
        gather: Duration,
        on_drops: impl FnMut(u64) + Send + 'static,
    ) -> io::Result<(LogQueue, LogGuard)> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            woken: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let (done, written) = std::sync::mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("tickd-log".into())
            .spawn(move || {
                writer.write_until_closed(out, gather, on_drops);
                let _ = done.send(());
            })?;
        Ok((
            LogQueue {
                shared: shared.clone(),
            },
            LogGuard { shared, written },
        ))
    }

    /// How many lines were dropped so far because the queue was full.
    #[cfg(test)]
    fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A line half appended by a thread that panicked is still text: go on.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `lines` lost, into the metric at once (see [`Shared::push`]).
    fn lost(&self, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        tickd::metrics::LOG_LINES_DROPPED.inc_by(lines);
    }

    /// Appends one line, or counts it dropped when the queue is full.
    fn push(&self, line: &[u8]) {
        let mut queue = self.lock();
        if queue.lines.len() + line.len() > MAX_QUEUED_BYTES {
            drop(queue);
            // Counted here, not by the writer: it is the one stuck while lines are dropped.
            self.lost(1);
            return;
        }
        let first = queue.lines.is_empty();
        queue.lines.extend_from_slice(line);
        drop(queue);
        if first {
            self.woken.notify_one();
        }
    }

    /// The writer thread: waits for lines, lets the burst gather, writes it, tells `on_drops`
    /// of new drops; until closed and empty. A failed write drops the rest of its burst, counted
    /// (logging never stops the scheduler).
    fn write_until_closed(
        &self,
        mut out: impl Write,
        gather: Duration,
        mut on_drops: impl FnMut(u64),
    ) {
        let mut writing = Vec::new();
        let mut told = 0;
        // A write that failed within a line left it without its end.
        let mut line_cut = false;
        loop {
            let mut queue = self.lock();
            while queue.lines.is_empty() && !queue.closed {
                queue = self
                    .woken
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.lines.is_empty() {
                return;
            }
            if !queue.closed && !gather.is_zero() {
                drop(queue);
                std::thread::sleep(gather);
                queue = self.lock();
            }
            std::mem::swap(&mut queue.lines, &mut writing);
            drop(queue);
            if line_cut && out.write_all(b"\n").is_ok() {
                line_cut = false;
            }
            let mut rest = &writing[..];
            while !rest.is_empty() {
                let chunk = &rest[..whole_lines(rest, WRITE_CHUNK)];
                let written = write_some(&mut out, chunk);
                if written < chunk.len() {
                    line_cut = written > 0 && chunk[written - 1] != b'\n';
                    let unwritten = &rest[written..];
                    let lost = unwritten.iter().filter(|b| **b == b'\n').count();
                    self.lost(lost as u64);
                    break;
                }
                rest = &rest[written..];
            }
            let _ = out.flush();
            writing.clear();
            // A burst's buffer is kept for the next one, up to a size.
            writing.shrink_to(KEPT_CAPACITY);
            // Lines are dropped only while the queue is full, so this thread comes round again
            // after them (and after a notice that was itself dropped).
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > told {
                told = dropped;
                on_drops(dropped);
            }
        }
    }
}

/// How many bytes of `bytes` make whole lines of at most `limit` bytes (at least one line, however
/// long).
fn whole_lines(bytes: &[u8], limit: usize) -> usize {
    let window = &bytes[..bytes.len().min(limit)];
    match window.iter().rposition(|b| *b == b'\n') {
        Some(end) => end + 1,
        // One line longer than `limit`: on its own.
        None => bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |end| end + 1),
    }
}

/// Writes `bytes` until done or an error; how many bytes went out.
fn write_some(out: &mut impl Write, bytes: &[u8]) -> usize {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    written
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.woken.notify_one();
        let _ = self.written.recv_timeout(FLUSH_BOUND);
    }
}

impl Write for &LogQueue {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.shared.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogQueue {
    type Writer = &'a LogQueue;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the writer thread was given, write by write, shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Sink {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().expect("sink").concat()
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("sink").push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A stderr that never takes a byte: a pipe nobody reads.
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_is_dropped() {
        let sink = Sink::default();
        let (queue, guard) = LogQueue::start(sink.clone(), GATHER, |_| {}).expect("writer thread");
        let mut expected = Vec::new();
        for i in 0..20_000 {
            let line = format!("line {i}\n");
            (&queue).write_all(line.as_bytes()).expect("write");
            expected.extend_from_slice(line.as_bytes());
        }
        drop(guard);
        assert_eq!(sink.bytes(), expected);
        assert_eq!(queue.dropped_lines(), 0);
        // Whole lines in each write, none larger than a pipe writes in one piece.
        let writes = sink.0.lock().expect("sink").clone();
        assert!(writes.len() < 20_000 / 10, "{} writes", writes.len());
        for write in writes {
            assert!(write.len() <= WRITE_CHUNK && write.ends_with(b"\n"));
        }
    }

    /// A stderr that takes 10 bytes, then fails once, then takes everything.
    struct FailsOnce {
        calls: usize,
        sink: Sink,
    }

    impl Write for FailsOnce {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            match self.calls {
                1 => self.sink.write(&buf[..10]),
                2 => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
                _ => self.sink.write(buf),
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A write that fails within a line loses the rest of its burst, counted, and the next
    /// burst starts on a line of its own, not glued to the cut one.
    #[test]
    fn a_failed_write_counts_its_lines_and_the_next_starts_a_new_line() {
        let sink = Sink::default();
        let out = FailsOnce {
            calls: 0,
            sink: sink.clone(),
        };
        let (queue, guard) = LogQueue::start(out, GATHER, |_| {}).expect("writer thread");
        for i in 0..3 {
            (&queue)
                .write_all(format!("first burst {i:04}\n").as_bytes())
                .expect("write");
        }
        // The first burst written (and failed) before the second comes.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while queue.dropped_lines() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first burst was not written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        (&queue).write_all(b"second burst\n").expect("write");
        drop(guard);
        assert_eq!(sink.bytes(), b"first burs\nsecond burst\n");
        assert_eq!(queue.dropped_lines(), 3);
    }

    #[test]
    fn chunks_end_on_line_ends() {
        assert_eq!(whole_lines(b"ab\ncd\nef", 6), 6);
        assert_eq!(whole_lines(b"ab\ncd\nef", 5), 3);
        // A line longer than the limit goes on its own.
        assert_eq!(whole_lines(b"abcdefgh\nij\n", 4), 9);
        assert_eq!(whole_lines(b"abcdefgh", 4), 8);
    }

    /// A stderr that blocks fills the queue: the lines past it are dropped and counted, the
    /// loggers never wait, and the exit waits for it a bounded time only.
    #[test]
    fn a_stuck_stderr_drops_and_counts_lines_and_holds_nobody() {
        let (queue, guard) = LogQueue::start(Stuck, GATHER, |_| {}).expect("writer thread");
        let line = [b'x'; 1023];
        let lines = 3 * MAX_QUEUED_BYTES / 1024;
        for _ in 0..lines {
            (&queue).write_all(&line).expect("write");
            (&queue).write_all(b"\n").expect("write");
        }
        // The first burst is with the stuck writer; at most the queue's worth more is kept.
        let kept_at_most = (2 * MAX_QUEUED_BYTES / 1024) as u64 * 2;
        assert!(
            queue.dropped_lines() >= 2 * lines as u64 - kept_at_most,
            "{} dropped of {}",
            queue.dropped_lines(),
            2 * lines
        );
        let started = std::time::Instant::now();
        drop(guard);
        assert!(
            started.elapsed() < FLUSH_BOUND * 5,
            "the exit waited on stderr"
        );
    }
}
