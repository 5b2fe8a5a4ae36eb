//! The integration-test binary: the daemon in process on a controlled clock (`scheduling`), and
//! the real `tickd` binary end to end in a temp dir (`binary`).

mod binary;
mod extremes;
mod hardening;
mod scheduling;
mod support;
