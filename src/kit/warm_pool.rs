//! A connection pool that hands out the connection used last.
//!
//! sqlx's pool queues its idle connections first in, first out, and pings each one it takes
//! back (a round trip, in a task of its own). One call at a time, consecutive statements
//! therefore land on a different PostgreSQL backend each, the one asleep the longest: every
//! statement wakes a cold process, and the pool grows to its maximum after any burst and
//! keeps cycling through all of it. One ExecuteAgent at a time (three statements each), that
//! cost 0.7 ms in the run that compared the two: its added latency beyond a durable commit fell
//! from 1.38 to 0.70 ms (median of three rounds; BENCHMARKS.md has that run and a noisier one).
//!
//! [`WarmPool`] puts a short stack in front of sqlx's pool: a connection whose statement
//! completed goes on top of it, unpinged, and the next statement takes it from there. At low
//! concurrency a few warm backends serve everything; under load the connections beyond the
//! stack come from, and go back to, sqlx's pool as before. Nothing else changes:
//! - only a connection whose statement succeeded is stacked; one that failed, or whose future
//!   was dropped midway, goes back through sqlx, which drains or closes it as always (sqlx
//!   itself reads whatever the previous statement left unread before running the next);
//! - a stacked connection unused for [`WARM_FOR`] goes back to sqlx (whose pool pings a
//!   connection idle that long before handing it out), so no stacked connection is trusted
//!   longer than an idle one was before;
//! - transactions (`begin`) and everything else reach sqlx's pool through `Deref`, unchanged;
//!   and a connection is stacked only while sqlx could still serve such a caller at once (an
//!   idle connection, or room to open one); once it cannot, released connections go back to
//!   sqlx and the callers waiting there;
//! - the stack keeps a quarter of the pool, at most [`WARM_MAX`] (none for a pool under 4);
//! - [`WarmPool::close`] empties the stack first: sqlx's close waits for every connection.

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;

/// How many connections the stack keeps at most: one call at a time uses up to three at once
/// (a read, a write beside Langflow, a finish); the rest of a busy pool stays in sqlx's queue.
/// A pool of fewer than `4 * WARM_MAX` connections stacks a quarter of them (none below 4).
pub const WARM_MAX: usize = 4;

/// How long a stacked connection is handed out without a test: sqlx's pool pings one idle
/// longer than this ([`crate::kit::db`]'s `PING_IF_IDLE_FOR`) before handing it out.
pub const WARM_FOR: Duration = Duration::from_secs(1);

/// sqlx's pool with a stack of the connections used last in front of it; clones share both.
#[derive(Debug)]
pub struct WarmPool<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    stack: Arc<Mutex<Vec<Warm<DB>>>>,
    /// How many the stack keeps.
    cap: usize,
}

/// A connection taken from a [`WarmPool`] for one statement. Dropped, it goes back through
/// sqlx (which drains or closes it): the statement failed, or its future was dropped midway.
pub struct Lease<'p, DB: sqlx::Database> {
    pool: &'p WarmPool<DB>,
    connection: PoolConnection<DB>,
}

impl<DB: sqlx::Database> Lease<'_, DB> {
    /// Passes the statement's result through, stacking the connection when it succeeded.
    pub fn kept_if_ok<T>(self, result: sqlx::Result<T>) -> sqlx::Result<T> {
        if result.is_ok() {
            self.pool.keep(self.connection);
        }
        result
    }
}

impl<DB: sqlx::Database> Deref for Lease<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.connection
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for Lease<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.connection
    }
}

#[derive(Debug)]
struct Warm<DB: sqlx::Database> {
    connection: PoolConnection<DB>,
    since: Instant,
}

impl<DB: sqlx::Database> Clone for WarmPool<DB> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), stack: self.stack.clone(), cap: self.cap }
    }
}

impl<DB: sqlx::Database> From<sqlx::Pool<DB>> for WarmPool<DB> {
    fn from(pool: sqlx::Pool<DB>) -> Self {
        Self::new(pool)
    }
}

impl<DB: sqlx::Database> Deref for WarmPool<DB> {
    type Target = sqlx::Pool<DB>;

    fn deref(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }
}

impl<DB: sqlx::Database> WarmPool<DB> {
    pub fn new(pool: sqlx::Pool<DB>) -> Self {
        let cap = (pool.options().get_max_connections() as usize / 4).min(WARM_MAX);
        Self { pool, stack: Arc::new(Mutex::new(Vec::with_capacity(cap + 1))), cap }
    }

    /// sqlx's pool itself, for APIs that take it by type.
    pub fn sqlx(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }

    /// The connection released last, if it is still warm; else one from sqlx's pool.
    pub async fn acquire(&self) -> sqlx::Result<PoolConnection<DB>> {
        let (warm, cold) = self.take_warm(Instant::now());
        // Dropped outside the lock: sqlx returns them to its own queue (a task each).
        drop(cold);
        match warm {
            Some(connection) => Ok(connection),
            None => self.pool.acquire().await,
        }
    }

    /// A connection to run one statement on: see [`Lease::kept_if_ok`].
    pub async fn lease(&self) -> sqlx::Result<Lease<'_, DB>> {
        Ok(Lease { pool: self, connection: self.acquire().await? })
    }

    /// Puts back a connection whose statement completed: on top of the stack, or into sqlx's
    /// pool when the stack is full (its oldest goes) or the pool is closing. It is stacked only
    /// while sqlx could still serve another caller at once (an idle connection, or room to open
    /// one): a caller waiting in sqlx's pool (a transaction, the health check) is then never
    /// kept waiting by connections idle on the stack.
    pub fn keep(&self, connection: PoolConnection<DB>) {
        if self.pool.is_closed() || !self.sqlx_has_room() {
            return;
        }
        let overflow = {
            let mut stack = self.stack.lock().unwrap_or_else(PoisonError::into_inner);
            stack.push(Warm { connection, since: Instant::now() });
            (stack.len() > self.cap).then(|| stack.remove(0))
        };
        drop(overflow);
    }

    fn sqlx_has_room(&self) -> bool {
        self.pool.num_idle() > 0 || self.pool.size() < self.pool.options().get_max_connections()
    }

    /// Connections on the stack now (idle, though sqlx counts them in use).
    pub fn warm(&self) -> usize {
        self.stack.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Empties the stack into sqlx's pool, then closes it (which waits for every connection).
    pub async fn close(&self) {
        let stacked = std::mem::take(&mut *self.stack.lock().unwrap_or_else(PoisonError::into_inner));
        drop(stacked);
        self.pool.close().await;
    }

    /// The newest stacked connection if it is warm, and the ones gone cold (all of them below
    /// a cold one are older still).
    fn take_warm(&self, now: Instant) -> (Option<PoolConnection<DB>>, Vec<Warm<DB>>) {
        let mut stack = self.stack.lock().unwrap_or_else(PoisonError::into_inner);
        match stack.pop() {
            Some(top) if now.saturating_duration_since(top.since) <= WARM_FOR => (Some(top.connection), Vec::new()),
            Some(top) => {
                let mut cold = std::mem::take(&mut *stack);
                cold.push(top);
                (None, cold)
            }
            None => (None, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqlitePoolOptions;

    async fn pool(max: u32) -> WarmPool<sqlx::Sqlite> {
        let pool = SqlitePoolOptions::new().max_connections(max).connect("sqlite::memory:").await.unwrap();
        WarmPool::new(pool)
    }

    /// The connection's own id, to tell connections apart.
    async fn id(connection: &mut PoolConnection<sqlx::Sqlite>) -> i64 {
        // Each in-memory SQLite connection is a database of its own: a temp table marks it.
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS mark (id INTEGER)").execute(&mut **connection).await.unwrap();
        let marked: Option<i64> =
            sqlx::query_scalar("SELECT id FROM mark").fetch_optional(&mut **connection).await.unwrap();
        match marked {
            Some(id) => id,
            None => {
                static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
                let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                sqlx::query("INSERT INTO mark VALUES (?)").bind(id).execute(&mut **connection).await.unwrap();
                id
            }
        }
    }

    #[tokio::test]
    async fn the_connection_kept_last_is_handed_out_next() {
        let pool = pool(16).await;
        let (mut a, mut b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        let (a_id, b_id) = (id(&mut a).await, id(&mut b).await);
        assert_ne!(a_id, b_id);
        pool.keep(a);
        pool.keep(b);
        assert_eq!(pool.warm(), 2);
        // Last in, first out: b, then a, whatever sqlx's own queue would have given.
        for _ in 0..3 {
            let mut next = pool.acquire().await.unwrap();
            assert_eq!(id(&mut next).await, b_id);
            pool.keep(next);
        }
        let mut first = pool.acquire().await.unwrap();
        let mut second = pool.acquire().await.unwrap();
        assert_eq!((id(&mut first).await, id(&mut second).await), (b_id, a_id));
        assert_eq!(pool.warm(), 0);
    }

    #[tokio::test]
    async fn the_stack_holds_at_most_warm_max_and_returns_the_oldest_to_sqlx() {
        let pool = pool(16).await;
        let mut held = Vec::new();
        for _ in 0..WARM_MAX + 2 {
            held.push(pool.acquire().await.unwrap());
        }
        for connection in held {
            pool.keep(connection);
        }
        assert_eq!(pool.warm(), WARM_MAX);
        // The two beyond it went back to sqlx's queue (after its release ping, in a task).
        idle_in(pool.sqlx(), 2).await;
    }

    #[tokio::test]
    async fn a_small_pool_stacks_a_quarter_and_one_of_one_stacks_nothing() {
        let (eight, one) = (pool(8).await, pool(1).await);
        let held = vec![eight.acquire().await.unwrap(), eight.acquire().await.unwrap(), eight.acquire().await.unwrap()];
        held.into_iter().for_each(|c| eight.keep(c));
        assert_eq!(eight.warm(), 2);
        let only = one.acquire().await.unwrap();
        one.keep(only);
        assert_eq!(one.warm(), 0);
        // sqlx's own callers (a transaction) get the one connection back at once.
        tokio::time::timeout(Duration::from_secs(2), one.begin()).await.expect("not kept waiting").unwrap();
    }

    #[tokio::test]
    async fn nothing_is_stacked_while_sqlx_has_no_connection_to_give() {
        let pool = pool(4).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.acquire().await.unwrap());
        }
        // Every connection is out and the pool is at its maximum: a transaction waits in sqlx.
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(2), pool.begin()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.keep(held.pop().unwrap());
        assert_eq!(pool.warm(), 0, "kept from sqlx's waiting caller");
        waiting.await.unwrap().expect("the waiting transaction got the connection").unwrap();
    }

    #[tokio::test]
    async fn a_statement_run_on_the_pool_stacks_its_connection_only_when_it_succeeded() {
        use crate::kit::dialect::{SqlRun, Via};
        let pool = pool(16).await;
        <sqlx::Sqlite as SqlRun>::execute(sqlx::query("SELECT 1"), Via::from(&pool)).await.unwrap();
        assert_eq!(pool.warm(), 1);
        let refused = <sqlx::Sqlite as SqlRun>::execute(sqlx::query("SELECT * FROM missing"), Via::from(&pool)).await;
        assert!(refused.is_err());
        assert_eq!(pool.warm(), 0, "the failed statement's connection went back through sqlx");
        let rows = <sqlx::Sqlite as SqlRun>::fetch_all(sqlx::query("SELECT 1"), Via::from(&pool)).await.unwrap();
        assert_eq!((rows.len(), pool.warm()), (1, 1));
    }

    /// On PostgreSQL after a burst (the pool at eight connections, all idle), one statement
    /// at a time: sqlx's own queue wakes a different backend for each, the warm pool one.
    #[tokio::test]
    async fn one_statement_at_a_time_stays_on_one_postgres_backend() {
        use crate::kit::dialect::{SqlRun, Via};
        use sqlx::Row as _;
        let url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let pool = WarmPool::new(sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(&url).await.unwrap());
        let burst: Vec<_> = futures::future::join_all((0..8).map(|_| pool.sqlx().acquire())).await;
        drop(burst);
        idle_in(pool.sqlx(), 8).await;
        let backend = async |via: Via<'_, sqlx::Postgres>| -> i32 {
            let row = <sqlx::Postgres as SqlRun>::fetch_optional(sqlx::query("SELECT pg_backend_pid()"), via);
            row.await.unwrap().unwrap().get(0)
        };
        let mut through_sqlx = std::collections::BTreeSet::new();
        let mut through_warm = std::collections::BTreeSet::new();
        for _ in 0..8 {
            through_sqlx.insert(backend(Via::Pool(pool.sqlx())).await);
            // sqlx pings the connection it took back before queueing it again.
            idle_in(pool.sqlx(), 8).await;
        }
        for _ in 0..8 {
            through_warm.insert(backend(Via::from(&pool)).await);
        }
        assert!(through_sqlx.len() > 1, "sqlx's queue cycles: {through_sqlx:?}");
        assert_eq!(through_warm.len(), 1, "the warm pool stays on one backend: {through_warm:?}");
        pool.close().await;
    }

    async fn idle_in<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, n: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while pool.num_idle() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the connections reach sqlx's idle queue");
    }

    #[tokio::test]
    async fn a_connection_kept_longer_than_warm_for_goes_back_through_sqlx() {
        let pool = pool(16).await;
        let connection = pool.acquire().await.unwrap();
        pool.keep(connection);
        let (warm, cold) = pool.take_warm(Instant::now() + WARM_FOR + Duration::from_millis(1));
        assert!(warm.is_none());
        assert_eq!(cold.len(), 1);
        assert_eq!(pool.warm(), 0);
        drop(cold);
        idle_in(pool.sqlx(), 1).await;
    }

    #[tokio::test]
    async fn close_empties_the_stack_and_nothing_is_stacked_after() {
        let pool = pool(16).await;
        let connection = pool.acquire().await.unwrap();
        let spare = pool.acquire().await.unwrap();
        pool.keep(connection);
        // sqlx's close waits for every connection: it returns only because the stack emptied.
        let closing = pool.clone();
        let closed = tokio::spawn(async move { closing.close().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.keep(spare);
        tokio::time::timeout(Duration::from_secs(5), closed).await.expect("close returns").unwrap();
        assert_eq!(pool.warm(), 0);
    }
}
