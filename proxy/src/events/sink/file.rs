//! The file and stdout sinks: one JSON event per line, appended.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{split, Msg, SinkMetrics, READ_AT_ONCE};
use crate::events::EventsError;

pub(crate) enum Lines {
    Stdout,
    /// The file is opened at start (so a bad path fails the start, with the
    /// path in the error) and reopened after a write error.
    File(PathBuf, Option<tokio::fs::File>),
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Lines {
    pub fn stdout() -> Lines {
        Lines::Stdout
    }

    pub fn file(path: &Path) -> Result<Lines, EventsError> {
        let f = open(path).map_err(|source| EventsError::File {
            path: path.to_owned(),
            source,
        })?;
        Ok(Lines::File(path.to_owned(), Some(f.into())))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Lines::Stdout => "stdout",
            Lines::File(..) => "file",
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>, m: SinkMetrics) {
        let mut msgs = Vec::with_capacity(READ_AT_ONCE);
        let mut events = Vec::with_capacity(READ_AT_ONCE);
        let mut acks = Vec::new();
        let mut buf = Vec::new();
        let mut stdout = tokio::io::stdout();
        while rx.recv_many(&mut msgs, READ_AT_ONCE).await > 0 {
            split(&mut msgs, &mut events, &mut acks);
            buf.clear();
            for e in &events {
                buf.extend_from_slice(e.json.as_bytes());
                buf.push(b'\n');
            }
            let n = events.len() as u64;
            events.clear();
            if n > 0 {
                let written = match &mut self {
                    Lines::Stdout => write(&mut stdout, &buf).await,
                    Lines::File(path, file) => {
                        if file.is_none() {
                            *file = open(path).ok().map(Into::into);
                        }
                        match file {
                            Some(f) => {
                                let r = write(f, &buf).await;
                                if r.is_err() {
                                    *file = None;
                                }
                                r
                            }
                            None => Err(std::io::Error::other("cannot reopen")),
                        }
                    }
                };
                match written {
                    Ok(()) => {
                        m.sent.inc_by(n);
                    }
                    Err(e) => {
                        tracing::warn!(sink = self.label(), error = %e, events = n, "cannot write security events");
                        m.errors.inc();
                        m.dropped.inc_by(n);
                    }
                }
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
    }
}

async fn write(w: &mut (impl AsyncWrite + Unpin), buf: &[u8]) -> std::io::Result<()> {
    w.write_all(buf).await?;
    w.flush().await
}
