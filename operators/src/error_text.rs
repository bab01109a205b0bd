//! One line of text for an error and every cause behind it, for log lines and problem details.

/// The error and its causes, `: `-separated (`connection closed: broken pipe`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the body failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_named_in_order() {
        let err = Outer(std::io::Error::other("connection reset"));
        assert_eq!(
            error_chain(&err),
            "reading the body failed: connection reset"
        );
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }
}
