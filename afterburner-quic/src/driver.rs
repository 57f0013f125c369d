//! [`EngineHandle`]: the engine thread. It owns the [`Engine`] and a [`PacketIo`]
//! backend, takes submissions from a bounded queue, and loops: commands → received
//! datagrams → timers → streams and datagrams out → outcomes to the sink.
//!
//! When there is no work it either busy-polls (for latency; it falls back to sleeping
//! after `busy_poll_idle`) or sleeps in `ppoll` on the backend's descriptor and an
//! eventfd that submitters ring only when the thread is actually asleep, so a busy
//! engine costs submitters no system call.

use std::{
    io,
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering, fence},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};

use afterburner_xdp::{
    batch::{RxBatch, TxBatch},
    io::{IoCounters, PacketIo},
};

use crate::{
    config::EngineConfig,
    engine::{ConnectionInfo, Engine, EngineError, check_payload},
    identity::Identity,
    outcome::{DropReason, Outcome},
    stats::EngineStats,
};

/// Datagrams per TX batch.
const TX_BATCH: usize = 256;
/// Datagrams per RX batch.
const RX_BATCH: usize = 64;
/// Transactions taken per loop pass, so that datagrams leave and ACKs are read while
/// a submission flood is still queued.
const TRANSACTIONS_PER_PASS: usize = 128;
/// How long shutdown waits for CONNECTION_CLOSE frames to leave.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// Where the engine thread reports outcomes. Runs on the engine thread: keep it cheap.
pub trait OutcomeSink: Send + 'static {
    /// Called once per submission that reached the engine.
    fn report(&mut self, outcome: Outcome);
}

impl<F: FnMut(Outcome) + Send + 'static> OutcomeSink for F {
    fn report(&mut self, outcome: Outcome) {
        self(outcome)
    }
}

/// A submission refused before it reached the engine; this is its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("transaction refused: {}", reason.label())]
pub struct SubmitError {
    /// Why: `Empty`, `TooLarge`, `EngineQueueFull` or `Shutdown`.
    pub reason: DropReason,
}

/// One transaction for one target, for [`EngineHandle::submit_batch`].
#[derive(Clone, Debug)]
pub struct Submission {
    /// The caller's id, echoed in the [`Outcome`].
    pub id: u64,
    /// The transaction's wire bytes (shared when one transaction goes to several leaders).
    pub payload: Arc<[u8]>,
    /// The leader's TPU QUIC address.
    pub target: SocketAddr,
}

enum Command {
    Submit {
        id: u64,
        payload: Arc<[u8]>,
        target: SocketAddr,
    },
    Batch(Vec<Submission>),
    Prewarm(SocketAddr),
    Inspect(SocketAddr, Sender<Option<ConnectionInfo>>),
    SetIdentity(Box<Identity>, Sender<Result<(), EngineError>>),
    Shutdown,
}

/// Wakes the engine thread out of `ppoll`.
#[derive(Debug)]
struct Waker {
    eventfd: OwnedFd,
    sleeping: AtomicBool,
}

impl Waker {
    fn new() -> io::Result<Self> {
        Ok(Self {
            eventfd: eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?,
            sleeping: AtomicBool::new(false),
        })
    }

    /// Rings the eventfd if the engine thread sleeps (or is about to).
    fn wake_if_sleeping(&self) {
        // Pairs with the fence in `Driver::sleep`: either we see `sleeping`, or the
        // engine sees our queued command.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            // A full counter (EAGAIN) still wakes: nothing to handle.
            let _ = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes());
        }
    }

    fn drain(&self) {
        let mut v = [0u8; 8];
        // Non-blocking; an empty counter (EAGAIN) means nothing to drain.
        let _ = rustix::io::read(&self.eventfd, &mut v);
    }
}

/// Handle to a running engine thread.
#[derive(Debug)]
pub struct EngineHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    running: Arc<AtomicBool>,
    stats: Arc<EngineStats>,
    local: SocketAddr,
    /// `EngineConfig::max_transaction_size`, checked before a submission is queued.
    max_transaction_size: usize,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl EngineHandle {
    /// Starts the engine thread over `io`, reporting outcomes to `sink`.
    ///
    /// # Errors
    /// When the identity's TLS context or the QUIC config cannot be built, or the
    /// thread cannot start.
    pub fn spawn<I: PacketIo + 'static, S: OutcomeSink>(
        config: EngineConfig,
        identity: &Identity,
        io: I,
        sink: S,
    ) -> Result<Self, EngineError> {
        Self::spawn_with_stats(config, identity, io, sink, Arc::default())
    }

    /// As [`Self::spawn`], counting into `stats` (a restarted engine keeps counting
    /// where the one it replaces stopped).
    ///
    /// # Errors
    /// As [`Self::spawn`].
    pub fn spawn_with_stats<I: PacketIo + 'static, S: OutcomeSink>(
        config: EngineConfig,
        identity: &Identity,
        io: I,
        sink: S,
        stats: Arc<EngineStats>,
    ) -> Result<Self, EngineError> {
        let local = io.local_addr();
        let max_transaction_size = config.max_transaction_size;
        let engine = Engine::new(config.clone(), identity, local, stats.clone())?;
        let (commands, rx) = crossbeam_channel::bounded(config.ingress_queue.max(1));
        let waker = Arc::new(Waker::new().map_err(|_| EngineError::Config("eventfd failed"))?);
        let driver = Driver {
            engine,
            io,
            sink,
            commands: rx,
            waker: waker.clone(),
            config,
            tx: TxBatch::new(TX_BATCH),
            rx: RxBatch::new(RX_BATCH),
            counters: IoCounters::default(),
        };
        let running = Arc::new(AtomicBool::new(true));
        let ended = ClearOnDrop(running.clone());
        let thread = std::thread::Builder::new()
            .name("afterburner-engine".into())
            .spawn(move || {
                // However the thread ends (shutdown, an I/O error, a panic).
                let _ended = ended;
                driver.run()
            })
            .map_err(|_| EngineError::Config("cannot spawn the engine thread"))?;
        Ok(Self {
            commands,
            waker,
            running,
            stats,
            local,
            max_transaction_size,
            thread: Some(thread),
        })
    }

    /// Hands a transaction to the engine for `target`. Its outcome goes to the sink,
    /// unless it is refused here, in which case the error is its outcome.
    ///
    /// # Errors
    /// [`SubmitError`] for empty or oversized payloads, a full engine queue, or a
    /// stopped engine.
    pub fn submit(
        &self,
        id: u64,
        payload: Arc<[u8]>,
        target: SocketAddr,
    ) -> Result<(), SubmitError> {
        if let Some(reason) = check_payload(&payload, self.max_transaction_size) {
            return Err(self.refuse(reason));
        }
        match self.commands.try_send(Command::Submit {
            id,
            payload,
            target,
        }) {
            Ok(()) => {
                self.waker.wake_if_sleeping();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(self.refuse(DropReason::EngineQueueFull)),
            Err(TrySendError::Disconnected(_)) => Err(self.refuse(DropReason::Shutdown)),
        }
    }

    /// Hands several submissions over in one queue operation (a batch counts as one
    /// entry of the ingress queue). Every submission's outcome goes to the sink,
    /// including empty or oversized payloads, which the engine drops before any stream.
    ///
    /// # Errors
    /// On a full queue or a stopped engine the batch comes back untouched, with the
    /// reason, for the caller to retry or count; nothing in it was counted.
    pub fn submit_batch(
        &self,
        batch: Vec<Submission>,
    ) -> Result<(), (SubmitError, Vec<Submission>)> {
        submit_batch(&self.commands, &self.waker, batch)
    }

    /// A cloneable handle that can submit from any thread (request handlers), while
    /// this handle keeps the engine thread.
    pub fn submitter(&self) -> EngineSubmitter {
        EngineSubmitter {
            commands: self.commands.clone(),
            waker: self.waker.clone(),
            running: self.running.clone(),
        }
    }

    /// Opens a connection to `target` ahead of need (an upcoming leader).
    ///
    /// # Errors
    /// When the engine queue is full or the engine stopped.
    pub fn prewarm(&self, target: SocketAddr) -> Result<(), SubmitError> {
        match self.commands.try_send(Command::Prewarm(target)) {
            Ok(()) => {
                self.waker.wake_if_sleeping();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(SubmitError {
                reason: DropReason::EngineQueueFull,
            }),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError {
                reason: DropReason::Shutdown,
            }),
        }
    }

    /// Asks the engine thread about its connection to `target` (waits up to 1 s).
    pub fn connection_info(&self, target: SocketAddr) -> Option<ConnectionInfo> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.commands
            .send_timeout(Command::Inspect(target, reply), Duration::from_secs(1))
            .ok()?;
        self.waker.wake_if_sleeping();
        answer.recv_timeout(Duration::from_secs(1)).ok().flatten()
    }

    /// Presents `identity` from now on (see [`Engine::set_identity`]): new
    /// connections carry its certificate, open ones are replaced and what they held
    /// goes out on the new ones. Waits up to 2 s for the engine thread.
    ///
    /// # Errors
    /// The identity's TLS context cannot be built (the old identity stays), or the
    /// engine thread is stopped or did not answer in time.
    pub fn set_identity(&self, identity: Identity) -> Result<(), EngineError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.commands
            .send_timeout(
                Command::SetIdentity(Box::new(identity), reply),
                Duration::from_secs(1),
            )
            .map_err(|_| EngineError::Unavailable("its queue did not take the request"))?;
        self.waker.wake_if_sleeping();
        answer
            .recv_timeout(Duration::from_secs(1))
            .map_err(|_| EngineError::Unavailable("no answer within 1 s"))?
    }

    /// The engine's counters.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Whether the engine thread still runs (false once it ended: shut down, an I/O
    /// error, a panic).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// The local address the engine sends from.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the engine: queued transactions are reported dropped (`Shutdown`),
    /// connections closed, the thread joined.
    ///
    /// # Errors
    /// The packet I/O error that stopped the engine thread, if one did.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // Blocking send: the engine keeps draining its queue, so this cannot hang.
        let _ = self.commands.send(Command::Shutdown);
        self.waker.wake_if_sleeping();
        thread
            .join()
            .map_err(|_| io::Error::other("engine thread panicked"))?
    }

    fn refuse(&self, reason: DropReason) -> SubmitError {
        EngineStats::add(&self.stats.submitted, 1);
        self.stats.record_drop(reason);
        SubmitError { reason }
    }
}

/// Submits batches to an engine thread; see [`EngineHandle::submitter`]. The engine
/// stops when its [`EngineHandle`] is shut down, whatever submitters remain.
#[derive(Clone)]
pub struct EngineSubmitter {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    running: Arc<AtomicBool>,
}

/// Whether the engine can take a submission now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Running, with room in its queue.
    Ready,
    /// Running, its queue full.
    Full,
    /// The engine thread has ended (shut down, an I/O error, a panic).
    Stopped,
}

/// Clears the flag when dropped: the engine thread holds it for its whole life.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for EngineSubmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSubmitter").finish_non_exhaustive()
    }
}

impl EngineSubmitter {
    /// Whether a submission could be taken now (a snapshot: the answer may change
    /// before the next call).
    pub fn availability(&self) -> Availability {
        if !self.running.load(Ordering::SeqCst) {
            Availability::Stopped
        } else if self.commands.is_full() {
            Availability::Full
        } else {
            Availability::Ready
        }
    }

    /// As [`EngineHandle::submit_batch`].
    ///
    /// # Errors
    /// As [`EngineHandle::submit_batch`].
    pub fn submit_batch(
        &self,
        batch: Vec<Submission>,
    ) -> Result<(), (SubmitError, Vec<Submission>)> {
        submit_batch(&self.commands, &self.waker, batch)
    }
}

fn submit_batch(
    commands: &Sender<Command>,
    waker: &Waker,
    batch: Vec<Submission>,
) -> Result<(), (SubmitError, Vec<Submission>)> {
    match commands.try_send(Command::Batch(batch)) {
        Ok(()) => {
            waker.wake_if_sleeping();
            Ok(())
        }
        Err(TrySendError::Full(Command::Batch(b))) => Err((
            SubmitError {
                reason: DropReason::EngineQueueFull,
            },
            b,
        )),
        Err(TrySendError::Disconnected(Command::Batch(b))) => Err((
            SubmitError {
                reason: DropReason::Shutdown,
            },
            b,
        )),
        Err(_) => Ok(()),
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "engine thread ended with an error");
        }
    }
}

struct Driver<I, S> {
    engine: Engine,
    io: I,
    sink: S,
    commands: Receiver<Command>,
    waker: Arc<Waker>,
    config: EngineConfig,
    tx: TxBatch,
    rx: RxBatch,
    counters: IoCounters,
}

impl<I: PacketIo, S: OutcomeSink> Driver<I, S> {
    fn run(mut self) -> io::Result<()> {
        let mut idle_since = Instant::now();
        let mut shutting_down = false;
        loop {
            let mut work = false;
            let mut now = Instant::now();
            let mut taken = 0;
            while taken < TRANSACTIONS_PER_PASS {
                match self.commands.try_recv() {
                    Ok(Command::Shutdown) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        shutting_down = true;
                        break;
                    }
                    Ok(cmd) => {
                        work = true;
                        taken += match &cmd {
                            Command::Batch(b) => b.len().max(1),
                            _ => 1,
                        };
                        self.command(cmd, now);
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                }
            }
            if shutting_down {
                return self.finish();
            }
            loop {
                let n = self.io.recv(&mut self.rx)?;
                if n == 0 {
                    break;
                }
                work = true;
                EngineStats::add(&self.engine.stats().recv_calls, 1);
                now = Instant::now();
                self.engine.recv(&mut self.rx);
                if n < self.rx.capacity() {
                    break;
                }
            }
            self.engine.on_timeout(now);
            let blocked = self.transmit(now)?;
            if self.engine.has_outcomes() {
                for o in self.engine.drain_outcomes() {
                    self.sink.report(o);
                }
            }
            if work {
                idle_since = now;
                continue;
            }
            if self.config.busy_poll
                && now.duration_since(idle_since) < self.config.busy_poll_idle
                && !blocked
            {
                std::hint::spin_loop();
                continue;
            }
            self.sleep(blocked)?;
            idle_since = Instant::now();
        }
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Submit {
                id,
                payload,
                target,
            } => self.engine.submit(id, payload, target, now),
            Command::Batch(batch) => {
                for s in batch {
                    self.engine.submit(s.id, s.payload, s.target, now);
                }
            }
            Command::Prewarm(target) => {
                self.engine.prewarm(target, now);
            }
            Command::Inspect(target, reply) => {
                let _ = reply.try_send(self.engine.connection_info(target));
            }
            Command::SetIdentity(identity, reply) => {
                let _ = reply.try_send(self.engine.set_identity(&identity, now));
            }
            Command::Shutdown => {}
        }
    }

    /// Sends pending datagrams and asks the engine for more until it has none or the
    /// path is full. Returns true when the path is full.
    fn transmit(&mut self, now: Instant) -> io::Result<bool> {
        loop {
            if !self.tx.is_empty() {
                self.io.send(&mut self.tx, &mut self.counters)?;
                self.export_counters();
                if !self.tx.is_empty() {
                    return Ok(true);
                }
            }
            let more = self.engine.flush(&mut self.tx, now);
            if self.tx.is_empty() && !more {
                return Ok(false);
            }
        }
    }

    fn export_counters(&mut self) {
        let stats = self.engine.stats();
        let c = std::mem::take(&mut self.counters);
        EngineStats::add(&stats.send_calls, c.send_calls);
        if c.would_block > 0 {
            EngineStats::add(&stats.send_would_block, c.would_block);
        }
        if c.send_errors > 0 {
            EngineStats::add(&stats.send_errors, c.send_errors);
        }
    }

    /// Sleeps until a datagram arrives, the path drains (when `blocked`), a command
    /// is queued, or the engine's next timer.
    fn sleep(&mut self, blocked: bool) -> io::Result<()> {
        self.waker.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !self.commands.is_empty() {
            self.waker.sleeping.store(false, Ordering::Relaxed);
            return Ok(());
        }
        let timeout = self.engine.next_timeout().map(|t| {
            let d = t.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: d.subsec_nanos().into(),
            }
        });
        let io_events = PollFlags::IN
            | if blocked {
                PollFlags::OUT
            } else {
                PollFlags::empty()
            };
        let mut fds = [
            PollFd::from_borrowed_fd(self.io.pollable(), io_events),
            PollFd::new(&self.waker.eventfd, PollFlags::IN),
        ];
        let polled = poll(&mut fds, timeout.as_ref());
        self.waker.sleeping.store(false, Ordering::Relaxed);
        match polled {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if fds[1].revents().contains(PollFlags::IN) {
            self.waker.drain();
        }
        Ok(())
    }

    /// Drops everything still queued, closes connections and gives the closes a moment
    /// to leave.
    fn finish(mut self) -> io::Result<()> {
        let now = Instant::now();
        while let Ok(cmd) = self.commands.try_recv() {
            let dropped: Vec<(u64, SocketAddr)> = match cmd {
                Command::Submit { id, target, .. } => vec![(id, target)],
                Command::Batch(batch) => batch.into_iter().map(|s| (s.id, s.target)).collect(),
                _ => Vec::new(),
            };
            for (id, target) in dropped {
                EngineStats::add(&self.engine.stats().submitted, 1);
                self.engine.stats().record_drop(DropReason::Shutdown);
                self.sink.report(Outcome {
                    id,
                    target,
                    kind: crate::outcome::OutcomeKind::Dropped(DropReason::Shutdown),
                });
            }
        }
        self.engine.shutdown();
        let deadline = now + SHUTDOWN_GRACE;
        while !self.engine.is_idle() && Instant::now() < deadline {
            let now = Instant::now();
            self.io.recv(&mut self.rx)?;
            self.engine.recv(&mut self.rx);
            self.engine.on_timeout(now);
            self.transmit(now)?;
            std::thread::sleep(Duration::from_millis(1));
        }
        for o in self.engine.drain_outcomes() {
            self.sink.report(o);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::UdpSocket,
        os::fd::{AsFd, BorrowedFd},
    };

    use afterburner_xdp::udp::UdpIo;

    use super::*;

    /// A packet path that fails for good on its first receive (a NIC gone, say).
    struct Broken(UdpSocket);

    impl PacketIo for Broken {
        fn local_addr(&self) -> SocketAddr {
            self.0
                .local_addr()
                .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into())
        }
        fn send(&mut self, batch: &mut TxBatch, _: &mut IoCounters) -> io::Result<()> {
            batch.clear();
            Ok(())
        }
        fn recv(&mut self, _: &mut RxBatch) -> io::Result<usize> {
            Err(io::Error::other("device gone"))
        }
        fn pollable(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }
    }

    fn wait_for(submitter: &EngineSubmitter, want: Availability) -> Availability {
        let deadline = Instant::now() + Duration::from_secs(5);
        while submitter.availability() != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        submitter.availability()
    }

    #[test]
    fn availability_follows_the_engine_thread() {
        let io = UdpIo::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let engine = EngineHandle::spawn(
            EngineConfig::default(),
            &Identity::random(),
            io,
            |_: Outcome| {},
        )
        .expect("spawn");
        let submitter = engine.submitter();
        assert_eq!(submitter.availability(), Availability::Ready);
        engine.shutdown().expect("clean shutdown");
        assert_eq!(submitter.availability(), Availability::Stopped);
    }

    #[test]
    fn an_engine_that_dies_on_an_io_error_is_stopped() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let engine = EngineHandle::spawn(
            EngineConfig::default(),
            &Identity::random(),
            Broken(socket),
            |_: Outcome| {},
        )
        .expect("spawn");
        let submitter = engine.submitter();
        assert_eq!(
            wait_for(&submitter, Availability::Stopped),
            Availability::Stopped
        );
        let err = engine.shutdown().expect_err("the I/O error is reported");
        assert_eq!(err.to_string(), "device gone");
    }
}
