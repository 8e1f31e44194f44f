//! An error and its causes on one line (`what: why: why`), for logs and
//! config problems, where a multi-line chain would not fit.

use std::fmt;

/// Displays an error followed by each of its sources.
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            // A wrapper that already prints its cause would repeat it.
            if !last.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config.yaml")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn joins_the_causes() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(
            Chain(&e).to_string(),
            "cannot read config.yaml: disk on fire"
        );
    }
}
