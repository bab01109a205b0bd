//! Errors of the PostgreSQL sink, each classified as retriable, a data error, or fatal.

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The connection could not be opened.
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] tokio_postgres::Error),
    /// A statement failed.
    #[error("postgres statement failed while {context}")]
    Statement {
        /// What the sink was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The schema migrations failed.
    #[error("schema migration failed")]
    Migration(#[source] refinery::Error),
    /// Dead letters could not be published to the dead-letter topic (transient).
    #[error("publishing to the dead-letter topic failed: {0}")]
    DeadLetterTopic(String),
}

impl SinkError {
    pub(crate) fn statement(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Statement { context, source }
    }

    fn driver_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Self::Connect(e) | Self::Statement { source: e, .. } => Some(e),
            Self::Migration(_) | Self::DeadLetterTopic(_) => None,
        }
    }

    /// The SQLSTATE code, when the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        self.driver_error()
            .and_then(|e| e.code())
            .map(|code| code.code())
    }

    /// Transient: the server or the network is down or busy, or the transaction lost a race.
    /// Retrying the same batch later can succeed, so it must never be dead-lettered.
    pub fn is_retriable(&self) -> bool {
        // A server that cannot be reached, is starting, shutting down or refusing connections
        // now may accept them later; the sink waits (loudly) rather than give up.
        if let Self::Connect(_) | Self::DeadLetterTopic(_) = self {
            return true;
        }
        let Some(err) = self.driver_error() else {
            return false;
        };
        match err.code().map(|code| code.code()) {
            // No SQLSTATE: I/O error, closed connection, timeout.
            None => true,
            Some(code) => {
                code.starts_with("08") // connection exception
                    || code.starts_with("53") // insufficient resources
                    || matches!(
                        code,
                        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03"
                    )
            }
        }
    }

    /// The server refused some row's content (data exception, constraint, program limit):
    /// retrying the whole batch never helps, isolating the row does.
    pub fn is_data_error(&self) -> bool {
        self.sqlstate().is_some_and(|code| {
            code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
        })
    }
}
