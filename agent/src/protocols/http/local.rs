//! An executor whose futures run on the session's own task: hyper's HTTP/2
//! server hands each stream to an executor, and loopgate's request
//! handling borrows the session (`&Session`, the target's enforcer), which
//! a spawned `'static` task could not. The session's loop polls what is
//! sent here next to the connection, so a stream lives no longer than its
//! session.
use std::{future::Future, pin::Pin};

use tokio::sync::mpsc;

pub type Task<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

#[derive(Clone)]
pub struct Local<'a>(mpsc::UnboundedSender<Task<'a>>);

impl<'a> Local<'a> {
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'a) {
        // The receiver lives until the session's loop has ended and
        // drained it; a send after that has nothing left to serve.
        let _ = self.0.send(Box::pin(task));
    }
}

impl<'a, F> hyper::rt::Executor<F> for Local<'a>
where
    F: Future<Output = ()> + Send + 'a,
{
    fn execute(&self, fut: F) {
        self.spawn(fut);
    }
}

pub fn channel<'a>() -> (Local<'a>, mpsc::UnboundedReceiver<Task<'a>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Local(tx), rx)
}
