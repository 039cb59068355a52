//! The one writer: every write of the store is a typed operation ([`Op`], one variant per write,
//! each applied by its own [`Apply`] impl in [`super::ops`]) sent to this loop, which takes every
//! operation waiting, runs each in its own savepoint (one failing write does not undo the
//! others), commits once (group commit), then answers each with its result.

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::super::StoreError;

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A write: applied inside the writer's transaction, with the time of its group.
pub(super) trait Apply: Send + Sized + 'static {
    /// What the write answers once committed.
    type Output: Send + 'static;
    /// Runs the write's statements.
    fn apply(
        self,
        c: &mut SqliteConnection,
        now: i64,
    ) -> impl Future<Output = Result<Self::Output>> + Send;
}

/// Where a write's answer goes.
type Reply<T> = oneshot::Sender<Result<T>>;

/// Declares the operations: the [`Op`] enum with one variant per write and the answering of
/// each, so that the loop below stays one `match` away from every write.
macro_rules! ops {
    ($($name:ident),* $(,)?) => {
        /// One write, with where its answer goes.
        pub(super) enum Op {
            $(
                #[allow(missing_docs)]
                $name(super::ops::$name, Reply<<super::ops::$name as Apply>::Output>),
            )*
        }

        /// A write that ran, waiting for its group's commit. (Some answers are large, such as
        /// an image's record; a group holds at most [`MAX_GROUP`] of them for one commit.)
        #[allow(clippy::large_enum_variant)]
        enum Ran {
            $($name(
                Result<<super::ops::$name as Apply>::Output>,
                Reply<<super::ops::$name as Apply>::Output>,
            ),)*
        }

        impl Op {
            async fn run(self, c: &mut SqliteConnection, now: i64) -> Ran {
                match self {
                    $(Op::$name(op, reply) => Ran::$name(in_savepoint(c, op, now).await, reply),)*
                }
            }

            /// Answers without running: the transaction could not be started.
            fn abort(self, e: &Arc<sqlx::Error>) {
                match self {
                    $(Op::$name(_, reply) => {
                        let _ = reply.send(Err(StoreError::Commit(e.clone())));
                    })*
                }
            }
        }

        impl Ran {
            fn answer(self, commit: &std::result::Result<(), Arc<sqlx::Error>>) {
                match self {
                    $(Ran::$name(result, reply) => {
                        let _ = reply.send(after_commit(result, commit));
                    })*
                }
            }
        }

        $(
            impl From<(super::ops::$name, Reply<<super::ops::$name as Apply>::Output>)> for Op {
                fn from(
                    (op, reply): (super::ops::$name, Reply<<super::ops::$name as Apply>::Output>),
                ) -> Op {
                    Op::$name(op, reply)
                }
            }
        )*
    };
}

ops!(
    Recover,
    MarkSubmitting,
    MarkRunning,
    SubmitAmbiguous,
    SubmitRefused,
    MarkFailed,
    TaskRetry,
    MarkSucceeded,
    RefreshUrls,
    MarkArchived,
    MarkLost,
    FetchError,
    RequeueImage,
    RequeueFailed,
    SaveToken,
    ClearToken,
    RecordEvent,
    StartRun,
    EndRun,
);

/// What the writer is sent.
pub(super) enum Msg {
    /// A write.
    Op(Op),
    /// Stop after the writes already queued; answered when stopped.
    Stop(oneshot::Sender<()>),
}

/// Largest number of writes committed together.
const MAX_GROUP: usize = 512;

/// A write's answer once its group's commit is known: a failed commit fails every write of it.
fn after_commit<T>(
    result: Result<T>,
    commit: &std::result::Result<(), Arc<sqlx::Error>>,
) -> Result<T> {
    match commit {
        Ok(()) => result,
        Err(e) => Err(StoreError::Commit(e.clone())),
    }
}

/// Runs queued writes until stopped or every sender is gone.
pub(super) async fn writer_loop(
    mut conn: PoolConnection<Sqlite>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut stop = None;
    while stop.is_none() {
        let Some(first) = rx.recv().await else { break };
        let mut ops = Vec::new();
        match first {
            Msg::Op(op) => ops.push(op),
            Msg::Stop(done) => stop = Some(done),
        }
        while stop.is_none() && ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => ops.push(op),
                Ok(Msg::Stop(done)) => stop = Some(done),
                Err(_) => break,
            }
        }
        if ops.is_empty() {
            continue;
        }
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            let e = Arc::new(e);
            for op in ops {
                op.abort(&e);
            }
            continue;
        }
        let now = crate::api::now_ms();
        let mut ran = Vec::with_capacity(ops.len());
        for op in ops {
            ran.push(op.run(&mut conn, now).await);
        }
        let commit = match sqlx::query("COMMIT").execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(Arc::new(e))
            }
        };
        for r in ran {
            r.answer(&commit);
        }
    }
    drop(conn);
    if let Some(done) = stop {
        let _ = done.send(());
    }
}

/// Applies `op` inside a savepoint, rolling back to it when it fails.
async fn in_savepoint<A: Apply>(c: &mut SqliteConnection, op: A, now: i64) -> Result<A::Output> {
    sqlx::query("SAVEPOINT op").execute(&mut *c).await?;
    match op.apply(&mut *c, now).await {
        Ok(v) => {
            sqlx::query("RELEASE op").execute(&mut *c).await?;
            Ok(v)
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK TO op").execute(&mut *c).await;
            let _ = sqlx::query("RELEASE op").execute(&mut *c).await;
            Err(e)
        }
    }
}
