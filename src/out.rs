//! Writing a command's output to stdout, where a reader that went away (`entra-operator crdgen | head -1`,
//! `kubectl entra status | head`) is not an error: Rust ignores SIGPIPE, so the write returns BrokenPipe, and
//! `print!` would turn that into a panic ("failed printing to stdout: Broken pipe"). Shared by the operator's
//! commands and the kubectl plugin.

use std::io::{self, Write};

/// Whether the reader still reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Everything was written.
    Written,
    /// The reader closed the pipe: the caller stops writing and succeeds.
    Closed,
}

/// Writes `text` to `out` and flushes it; a closed pipe is [`Flow::Closed`], any other failure an error.
pub fn write_to(out: &mut impl Write, text: &str) -> io::Result<Flow> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(Flow::Written),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Flow::Closed),
        Err(e) => Err(e),
    }
}

/// [`write_to`] on stdout.
pub fn stdout(text: &str) -> io::Result<Flow> {
    write_to(&mut io::stdout().lock(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone, or that fails otherwise.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_and_other_failures_are_errors() {
        let mut buffer = Vec::new();
        assert_eq!(write_to(&mut buffer, "a\n").unwrap(), Flow::Written);
        assert_eq!(buffer, b"a\n");
        let closed = write_to(&mut Failing(io::ErrorKind::BrokenPipe), "a").unwrap();
        assert_eq!(closed, Flow::Closed);
        let full = write_to(&mut Failing(io::ErrorKind::StorageFull), "a");
        assert_eq!(full.unwrap_err().kind(), io::ErrorKind::StorageFull);
    }
}
