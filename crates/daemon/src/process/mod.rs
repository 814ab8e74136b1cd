//! `/process/...`: one-shot commands, code runs and sessions.

pub mod execute;
pub mod interpreter;
pub mod pty;
pub mod session;
pub mod shell;
pub mod stream;
