//! Runs clients on worker threads and collects what they recorded.
//!
//! Thread per core, like the server: each worker thread runs its own
//! single-threaded tokio runtime and owns some of the connections plus the
//! clients that use them, so a request never hops threads and recording
//! never takes a lock. Client `i` uses connection `i % conns` (etcd's
//! benchmark assigns clients to connections round-robin the same way) and
//! connection `j` lives on thread `j % threads`.
//!
//! Start-up is two-phase: every thread connects and prepares its clients
//! (grants leases, opens streams) first; the clock starts only when all are
//! ready, so connection set-up never counts as request latency.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use metastore::grpc::Status;

use crate::grpc_client::Channel;
use crate::pacer::Pacer;
use crate::pacing::{Budget, Schedule, Ticket};
use crate::progress::Progress;
use crate::recorder::Recorder;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Connections are spread over these round-robin.
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    /// Worker threads; at most `conns` are useful.
    pub threads: usize,
    pub dial_timeout: Duration,
}

impl Topology {
    pub fn threads_used(&self) -> usize {
        self.threads.clamp(1, self.conns.max(1))
    }

    pub fn thread_of_connection(&self, connection: usize) -> usize {
        connection % self.threads_used()
    }

    pub fn connection_of_client(&self, client: usize) -> usize {
        client % self.conns.max(1)
    }
}

/// One client's behaviour: a sequence of requests, one at a time.
pub trait Client: 'static {
    /// Runs once before the clock starts (e.g. grant a lease, open a
    /// stream). An error aborts the run.
    fn prepare(&mut self, _channel: &Channel) -> impl Future<Output = Result<(), Status>> {
        async { Ok(()) }
    }

    /// Performs the request for `ticket`.
    fn execute(&mut self, channel: &Channel, ticket: Ticket) -> impl Future<Output = Completion>;
}

/// How one request ended, and which of the workload's sections (e.g.
/// txn-mixed's reads and writes) it counts towards.
pub struct Completion {
    pub section: usize,
    pub result: Result<(), Status>,
}

impl From<Result<(), Status>> for Completion {
    fn from(result: Result<(), Status>) -> Self {
        Self { section: 0, result }
    }
}

/// What a finished run measured.
pub struct Outcome {
    /// One recorder per section the clients reported into.
    pub recorders: Vec<Recorder>,
    /// From the start of the clock to the last completion.
    pub elapsed: Duration,
}

/// The work of one worker thread, in two phases around the barrier.
/// Shared by all threads (hence `Sync`); the futures it returns run on the
/// thread's own single-threaded runtime and need not be `Send`.
pub trait ThreadPlan: Send + Sync + 'static {
    /// What set-up hands to the timed phase (connections, clients, streams).
    type Prepared: 'static;
    /// What the thread reports back.
    type Output: Send + 'static;

    /// Before the clock starts: connect and prepare. An error aborts the run.
    fn prepare(&self, thread_index: usize) -> impl Future<Output = Result<Self::Prepared, Status>>;

    /// The timed phase.
    fn run(
        &self,
        prepared: Self::Prepared,
        schedule: Arc<Schedule>,
    ) -> impl Future<Output = Self::Output>;
}

/// Runs `plan` on the topology's threads: all prepare, then the clock
/// starts and all run. Returns every thread's output and the time from the
/// start of the clock until the last thread finished.
pub fn run_threads<P: ThreadPlan>(
    topology: &Topology,
    budget: Budget,
    rate: Option<f64>,
    progress: &Progress,
    plan: P,
) -> Result<(Vec<P::Output>, Duration), Status> {
    let plan = Arc::new(plan);
    let threads = topology.threads_used();
    let (ready_sender, ready_receiver) = mpsc::channel::<Result<(), Status>>();
    let mut schedule_senders = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for thread_index in 0..threads {
        let (schedule_sender, schedule_receiver) = mpsc::channel::<Option<Arc<Schedule>>>();
        schedule_senders.push(schedule_sender);
        let plan = Arc::clone(&plan);
        let ready_sender = ready_sender.clone();
        let handle = thread::Builder::new()
            .name(format!("loadgen-{thread_index}"))
            .spawn(move || worker_thread(thread_index, &*plan, ready_sender, schedule_receiver))
            .map_err(|error| Status::internal(format!("spawn worker thread: {error}")))?;
        handles.push(handle);
    }
    drop(ready_sender);

    let mut first_error = None;
    for _ in 0..threads {
        match ready_receiver.recv() {
            Ok(Ok(())) => {}
            Ok(Err(status)) => {
                first_error.get_or_insert(status);
            }
            Err(_) => {
                first_error.get_or_insert(Status::internal("a worker thread died during set-up"));
            }
        }
    }
    let schedule = first_error
        .is_none()
        .then(|| Arc::new(Schedule::new(budget, rate, Instant::now())));
    for sender in &schedule_senders {
        let _ = sender.send(schedule.clone());
    }
    if let Some(schedule) = &schedule {
        progress.follow(schedule, || {
            handles.iter().all(|handle| handle.is_finished())
        });
    }
    let mut outputs = Vec::with_capacity(threads);
    // The run ends when its last thread does, not when the progress poll
    // (100 ms) or the joins notice: timing those rounded every run up to
    // the next 100 ms, 2-5% of a 2-4 s benchmark.
    let mut last_finish = None;
    for handle in handles {
        match handle.join() {
            Ok(Some((output, finished_at))) => {
                outputs.push(output);
                last_finish = last_finish.max(Some(finished_at));
            }
            Ok(None) => {}
            Err(_) => {
                first_error.get_or_insert(Status::internal("a worker thread panicked"));
            }
        }
    }
    match (first_error, schedule) {
        (None, Some(schedule)) => {
            let finished_at = last_finish.unwrap_or_else(Instant::now);
            Ok((
                outputs,
                finished_at.saturating_duration_since(schedule.started()),
            ))
        }
        (Some(error), _) => Err(error),
        (None, None) => Err(Status::internal("run did not start")),
    }
}

/// One worker thread: prepare, report ready, wait for the schedule, run.
fn worker_thread<P: ThreadPlan>(
    thread_index: usize,
    plan: &P,
    ready: mpsc::Sender<Result<(), Status>>,
    schedule: mpsc::Receiver<Option<Arc<Schedule>>>,
) -> Option<(P::Output, Instant)> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(Status::internal(format!("tokio runtime: {error}"))));
            return None;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let prepared = match plan.prepare(thread_index).await {
            Ok(prepared) => {
                let _ = ready.send(Ok(()));
                prepared
            }
            Err(status) => {
                let _ = ready.send(Err(status));
                return None;
            }
        };
        let schedule = schedule.recv().ok().flatten()?;
        let output = plan.run(prepared, schedule).await;
        Some((output, Instant::now()))
    })
}

/// Connects the connections that live on `thread_index`; the others are
/// `None`, so the result is indexed by connection number.
pub async fn connect_thread_channels(
    thread_index: usize,
    topology: &Topology,
) -> Result<Vec<Option<Channel>>, Status> {
    let mut channels = Vec::new();
    for connection in 0..topology.conns.max(1) {
        if topology.thread_of_connection(connection) != thread_index {
            channels.push(None);
            continue;
        }
        let endpoint = &topology.endpoints[connection % topology.endpoints.len()];
        channels.push(Some(
            Channel::connect(endpoint, topology.dial_timeout).await?,
        ));
    }
    Ok(channels)
}

/// Of `count` clients (or streams), those whose connection is among
/// `channels` (this thread's, from [`connect_thread_channels`]), with it.
pub fn local_clients<'a>(
    topology: &'a Topology,
    channels: &'a [Option<Channel>],
    count: usize,
) -> impl Iterator<Item = (usize, &'a Channel)> + 'a {
    (0..count).filter_map(move |index| {
        let channel = channels[topology.connection_of_client(index)].as_ref()?;
        Some((index, channel))
    })
}

/// Runs `budget` requests (at `rate` per second if given) spread over the
/// topology's clients; `make_client(index)` builds client `index` on its
/// thread.
pub fn run_clients<C, F>(
    topology: &Topology,
    budget: Budget,
    rate: Option<f64>,
    progress: &Progress,
    make_client: F,
) -> Result<Outcome, Status>
where
    C: Client,
    F: Fn(usize) -> C + Send + Sync + 'static,
{
    let plan = ClientsPlan {
        topology: topology.clone(),
        make_client,
    };
    let (outputs, elapsed) = run_threads(topology, budget, rate, progress, plan)?;
    let mut recorders = Vec::new();
    for thread_recorders in &outputs {
        merge_sections(&mut recorders, thread_recorders);
    }
    Ok(Outcome { recorders, elapsed })
}

/// The plan of the request/response workloads: each thread's clients take
/// tickets from the shared schedule until it runs out.
struct ClientsPlan<F> {
    topology: Topology,
    make_client: F,
}

impl<C, F> ThreadPlan for ClientsPlan<F>
where
    C: Client,
    F: Fn(usize) -> C + Send + Sync + 'static,
{
    type Prepared = Vec<(Channel, C)>;
    type Output = Vec<Recorder>;

    async fn prepare(&self, thread_index: usize) -> Result<Self::Prepared, Status> {
        let channels = connect_thread_channels(thread_index, &self.topology).await?;
        let mut clients = Vec::new();
        for (client_index, channel) in
            local_clients(&self.topology, &channels, self.topology.clients)
        {
            let mut client = (self.make_client)(client_index);
            client.prepare(channel).await?;
            clients.push((channel.clone(), client));
        }
        Ok(clients)
    }

    async fn run(&self, clients: Self::Prepared, schedule: Arc<Schedule>) -> Self::Output {
        drive_clients(clients, &schedule).await
    }
}

/// Adds `from`'s per-section recorders into `into`, growing it as needed.
pub fn merge_sections(into: &mut Vec<Recorder>, from: &[Recorder]) {
    if into.len() < from.len() {
        into.resize_with(from.len(), Recorder::new);
    }
    for (total, part) in into.iter_mut().zip(from) {
        total.merge(part);
    }
}

/// Runs this thread's `clients` (each with its connection) until the
/// schedule runs out, paced by one [`Pacer`] for the thread, and returns
/// what they recorded, one recorder per section.
pub async fn drive_clients<C: Client>(
    clients: impl IntoIterator<Item = (Channel, C)>,
    schedule: &Arc<Schedule>,
) -> Vec<Recorder> {
    let recorders = SharedRecorders::default();
    let pacer = Pacer::start();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(channel, client)| {
            tokio::task::spawn_local(drive_client(
                channel,
                client,
                Arc::clone(schedule),
                pacer.clone(),
                Rc::clone(&recorders),
            ))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    recorders.take()
}

/// Takes tickets until the schedule runs out, sending each request at its
/// due time (released by the thread's `pacer`) and recording it into its
/// section.
async fn drive_client<C: Client>(
    channel: Channel,
    mut client: C,
    schedule: Arc<Schedule>,
    pacer: Pacer,
    recorders: SharedRecorders,
) {
    while let Some(ticket) = schedule.take(Instant::now()) {
        pacer.wait_until(ticket.intended_start).await;
        let completion = client.execute(&channel, ticket).await;
        let mut recorders = recorders.borrow_mut();
        if recorders.len() <= completion.section {
            recorders.resize_with(completion.section + 1, Recorder::new);
        }
        let recorder = &mut recorders[completion.section];
        match completion.result {
            Ok(()) => recorder.record_success(ticket.intended_start.elapsed()),
            Err(status) => recorder.record_error(&status),
        }
    }
}

/// The recorders (one per section) of all the clients on one thread.
///
/// Shared rather than one set per client: a recorder's histogram is about
/// 270 KiB, so per-client recorders made loadgen zero ~70 MB at 256
/// clients and merge 256 histograms per section at the end. The clients of
/// a thread run on its single-threaded runtime, so sharing costs no lock.
type SharedRecorders = Rc<RefCell<Vec<Recorder>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_spread_round_robin_over_connections_and_threads() {
        let topology = Topology {
            endpoints: vec!["a".into()],
            conns: 4,
            clients: 10,
            threads: 2,
            dial_timeout: Duration::from_secs(1),
        };
        let per_connection: Vec<usize> = (0..10)
            .map(|client| topology.connection_of_client(client))
            .collect();
        assert_eq!(per_connection, vec![0, 1, 2, 3, 0, 1, 2, 3, 0, 1]);
        let per_thread: Vec<usize> = (0..4)
            .map(|connection| topology.thread_of_connection(connection))
            .collect();
        assert_eq!(per_thread, vec![0, 1, 0, 1]);
    }

    #[test]
    fn never_more_threads_than_connections() {
        let topology = Topology {
            endpoints: vec!["a".into()],
            conns: 1,
            clients: 8,
            threads: 4,
            dial_timeout: Duration::from_secs(1),
        };
        assert_eq!(topology.threads_used(), 1);
    }
}
