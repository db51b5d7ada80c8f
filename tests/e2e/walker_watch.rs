//! WatchRun without polling: idle watches cost the database nothing, watchers wake when their
//! run moves (in this process or, on PostgreSQL, after the listening connection was killed), open
//! watches are capped per tenant and per process, and a watch that reached its lifetime ends with
//! the sequence to resume from.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use futures::StreamExt;
use tonic::Code;
use tonic::codec::Streaming;

use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::real_langflow_url;
use crate::walker_support::*;

/// How long a watcher may take to hear of its run's next event: generous for a loaded machine.
const HEARD: Duration = Duration::from_secs(60);

/// A run of a new agent of `tenant` (draft → check → publish), waiting for its review.
async fn run_waiting_for_review(app: &TestApp, tenant: &str) -> pb::Run {
    let steps = vec![llm("draft", "Draft a post about {input}"), review("check"), output("publish")];
    let agent = active_walker(app, tenant, config(steps, 0, vec![])).await;
    let mut runs = app.runs(tenant).await;
    let run = start_run(&mut runs, &agent.id, "our spring sale").await;
    wait_run(&mut runs, &run.id, Duration::from_secs(60), status_is(pb::RunStatus::WaitingReview)).await
}

/// Approves the run's pending review.
async fn approve(runs: &mut RunClient, run: &pb::Run) {
    let reviews = runs
        .list_pending_reviews(pb::ListPendingReviewsRequest { agent_id: run.agent_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .reviews;
    let review = reviews.into_iter().find(|r| r.run_id == run.id).expect("the run's pending review");
    let request = pb::ApproveStepRequest {
        run_id: run.id.clone(),
        step_id: review.step_id,
        review_id: review.id,
        edited_output: None,
        request_id: String::new(),
    };
    runs.approve_step(request).await.expect("approve");
}

async fn watch(runs: &mut RunClient, run_id: &str, from: i64) -> Result<Streaming<pb::RunEvent>, tonic::Status> {
    runs.watch_run(pb::WatchRunRequest { id: run_id.into(), from_sequence: from }).await.map(|r| r.into_inner())
}

/// The stream's next event, which must come within [`HEARD`].
async fn next_event(stream: &mut Streaming<pb::RunEvent>) -> Option<Result<pb::RunEvent, tonic::Status>> {
    tokio::time::timeout(HEARD, stream.next()).await.expect("the watcher heard of its run in time")
}

/// Reads the stream until an event of `kind`; answers the events read.
async fn until_kind(stream: &mut Streaming<pb::RunEvent>, kind: &str) -> Vec<pb::RunEvent> {
    let mut events = Vec::new();
    loop {
        let event = next_event(stream).await.expect("the stream goes on").expect("an event");
        let found = event.kind == kind;
        events.push(event);
        if found {
            return events;
        }
    }
}

/// The sequences of `events`, which must be 1, 2, … without gap or repeat.
fn assert_contiguous(events: &[pb::RunEvent]) {
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(sequences, expected, "{events:#?}");
}

/// The number of transactions committed in the database so far (PostgreSQL's statistics).
async fn commits(db: &TestDb) -> i64 {
    db.sql("SELECT xact_commit::text FROM pg_stat_database WHERE datname = current_database()").await.parse().unwrap()
}

/// 2,000 watches of a run waiting for a person cost the database nothing while they wait
/// (each used to poll it twice every 200 ms), and each still hears the run end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_thousand_idle_watches_cost_no_database_commits() {
    const WATCHES: usize = 2000;
    const CONNECTIONS: usize = 40;
    /// Fewer commits than this in 3 s: one for every 20 watches.
    const IDLE_COMMITS: i64 = 100;
    let app = spawn_walker_app(
        Backend::Postgres,
        &real_langflow_url(),
        &[("WATCH_MAX_PER_TENANT", WATCHES.to_string()), ("WATCH_MAX_PER_PROCESS", WATCHES.to_string())],
    )
    .await;
    let run = run_waiting_for_review(&app, "tenant-idle").await;

    let waiting = Arc::new(AtomicUsize::new(0));
    // Opened 100 at a time: a client opening thousands at once is another story (a burst).
    let opening = Arc::new(tokio::sync::Semaphore::new(100));
    let mut watchers = Vec::new();
    for connection in 0..CONNECTIONS {
        let runs = app.runs("tenant-idle").await;
        for _ in 0..WATCHES / CONNECTIONS {
            let (mut runs, run_id) = (runs.clone(), run.id.clone());
            let (waiting, opening) = (waiting.clone(), opening.clone());
            watchers.push(tokio::spawn(async move {
                let turn = opening.acquire_owned().await.unwrap();
                let mut stream =
                    watch(&mut runs, &run_id, 1).await.unwrap_or_else(|e| panic!("watch {connection}: {e}"));
                until_kind(&mut stream, "review_requested").await;
                drop(turn);
                waiting.fetch_add(1, Ordering::SeqCst);
                until_kind(&mut stream, "run_succeeded").await;
                assert!(next_event(&mut stream).await.is_none(), "the stream ends with the run");
            }));
        }
    }
    eventually(Duration::from_secs(120), "every watch open and waiting", || {
        let waiting = waiting.clone();
        async move { waiting.load(Ordering::SeqCst) == WATCHES }
    })
    .await;

    // Statistics reach pg_stat_database late (a backend reports them up to seconds after): some
    // window of 3 s soon has none of the watches' opening reads in it, and then it must cost
    // almost nothing: the service's own background work (workers, scheduler, health: about 15
    // commits in 3 s), where polling cost 60,000.
    let windows = std::sync::Mutex::new(Vec::new());
    let (db, windows_seen) = (&app.agent_db, &windows);
    eventually(
        Duration::from_secs(60),
        "a 3 s window with the idle watches and almost no commits",
        move || async move {
            let before = commits(db).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let spent = commits(db).await - before;
            windows_seen.lock().unwrap().push(spent);
            spent < IDLE_COMMITS
        },
    )
    .await;
    let windows = windows.into_inner().unwrap();
    eprintln!("commits in each 3 s window with {WATCHES} idle watches: {windows:?}");

    let mut runs = app.runs("tenant-idle").await;
    approve(&mut runs, &run).await;
    for watcher in watchers {
        watcher.await.expect("every watcher heard the run end");
    }
}

both_backends!(
    /// A watcher sleeps until its run moves, and hears each event as it is written.
    async fn a_watcher_hears_its_run_move_without_polling(backend) {
        let app = spawn_walker_app(backend, &real_langflow_url(), &[]).await;
        let run = run_waiting_for_review(&app, "tenant-hear").await;
        let mut runs = app.runs("tenant-hear").await;
        let mut stream = watch(&mut runs, &run.id, 1).await.unwrap();
        let mut events = until_kind(&mut stream, "review_requested").await;

        approve(&mut runs, &run).await;
        events.extend(until_kind(&mut stream, "run_succeeded").await);
        assert!(next_event(&mut stream).await.is_none(), "the stream ends with the run");
        assert_contiguous(&events);
        assert!(events.iter().any(|e| e.kind == "review_approved"), "{events:#?}");
    }
);

/// Open watches are capped per tenant and per process (RESOURCE_EXHAUSTED naming the limit), and
/// a watch stops counting when its client goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_past_a_limit_are_resource_exhausted_until_clients_go_away() {
    let app = spawn_walker_app(
        Backend::Postgres,
        &real_langflow_url(),
        &[("WATCH_MAX_PER_TENANT", "3".into()), ("WATCH_MAX_PER_PROCESS", "5".into())],
    )
    .await;
    let run_a = run_waiting_for_review(&app, "tenant-a").await;
    let run_b = run_waiting_for_review(&app, "tenant-b").await;
    let (mut on_a, mut on_b) = (app.runs("tenant-a").await, app.runs("tenant-b").await);

    let mut open_a = Vec::new();
    for _ in 0..3 {
        open_a.push(watch(&mut on_a, &run_a.id, 1).await.expect("under the tenant's limit"));
    }
    let refused = expect_code(watch(&mut on_a, &run_a.id, 1).await, Code::ResourceExhausted);
    assert!(refused.message().contains("WATCH_MAX_PER_TENANT"), "{}", refused.message());

    let mut open_b = Vec::new();
    for _ in 0..2 {
        open_b.push(watch(&mut on_b, &run_b.id, 1).await.expect("under both limits"));
    }
    let refused = expect_code(watch(&mut on_b, &run_b.id, 1).await, Code::ResourceExhausted);
    assert!(refused.message().contains("WATCH_MAX_PER_PROCESS"), "{}", refused.message());
    // Tenant A's clients go away: their watches stop counting, and A may watch again, up to its
    // limit.
    drop(open_a);
    eventually(HEARD, "tenant A's watches released", || {
        let (mut on_a, id) = (on_a.clone(), run_a.id.clone());
        async move {
            let mut reopened = Vec::new();
            for _ in 0..3 {
                match watch(&mut on_a, &id, 1).await {
                    Ok(stream) => reopened.push(stream),
                    Err(status) if status.code() == Code::ResourceExhausted => return false,
                    Err(status) => panic!("{status}"),
                }
            }
            expect_code(watch(&mut on_a, &id, 1).await, Code::ResourceExhausted);
            true
        }
    })
    .await;
    drop(open_b);
    eventually(HEARD, "tenant B's watches released", || {
        let (mut on_b, id) = (on_b.clone(), run_b.id.clone());
        async move {
            match watch(&mut on_b, &id, 1).await {
                Ok(mut stream) => !until_kind(&mut stream, "review_requested").await.is_empty(),
                Err(status) if status.code() == Code::ResourceExhausted => false,
                Err(status) => panic!("{status}"),
            }
        }
    })
    .await;
}

/// A watch open for its whole lifetime ends UNAVAILABLE naming the sequence to resume from; a
/// watch from there gets the rest of the run, without a gap or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_past_its_lifetime_ends_with_where_to_resume() {
    let app =
        spawn_walker_app(Backend::Postgres, &real_langflow_url(), &[("WATCH_MAX_LIFETIME_SECS", "2".into())]).await;
    let run = run_waiting_for_review(&app, "tenant-life").await;
    let mut runs = app.runs("tenant-life").await;

    let mut stream = watch(&mut runs, &run.id, 1).await.unwrap();
    let mut events = until_kind(&mut stream, "review_requested").await;
    let ended = next_event(&mut stream).await.expect("the stream ends with a status").expect_err("not an event");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    let resume_from = events.len() as i64 + 1;
    assert!(ended.message().contains(&format!("resume with from_sequence={resume_from}")), "{}", ended.message());
    assert!(next_event(&mut stream).await.is_none());

    approve(&mut runs, &run).await;
    let mut resumed = watch(&mut runs, &run.id, resume_from).await.unwrap();
    events.extend(until_kind(&mut resumed, "run_succeeded").await);
    assert!(next_event(&mut resumed).await.is_none(), "the stream ends with the run");
    assert_contiguous(&events);
}

/// The process's listening connection for run events is killed: it listens again by itself, and watchers
/// hear their runs move, both while it was away and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_watchers_recover_when_the_listening_connection_is_killed() {
    let app = spawn_walker_app(Backend::Postgres, &real_langflow_url(), &[]).await;
    let listening = "SELECT count(*)::text FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN \"engarde_run_events\"%'";
    let first = run_waiting_for_review(&app, "tenant-feed").await;
    let second = run_waiting_for_review(&app, "tenant-feed").await;
    let mut runs = app.runs("tenant-feed").await;
    let mut on_first = watch(&mut runs, &first.id, 1).await.unwrap();
    let mut on_second = watch(&mut runs, &second.id, 1).await.unwrap();
    until_kind(&mut on_first, "review_requested").await;
    until_kind(&mut on_second, "review_requested").await;

    let killed = app
        .agent_db
        .sql(
            "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE 'LISTEN \"engarde_run_events\"%'",
        )
        .await;
    assert_eq!(killed, "1", "one process, one listening connection for run events");
    // Moved while nobody (or a new connection) listens: heard all the same.
    approve(&mut runs, &first).await;
    until_kind(&mut on_first, "run_succeeded").await;

    // Moved once the feed listens again: heard through the new connection.
    let db = &app.agent_db;
    eventually(HEARD, "a listening connection again", move || async move { db.sql(listening).await == "1" }).await;
    approve(&mut runs, &second).await;
    until_kind(&mut on_second, "run_succeeded").await;
}
