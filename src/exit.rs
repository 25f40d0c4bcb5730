//! Exit codes of the `teal` command, in one place.
//!
//! Errors in input and environment use the BSD sysexits codes, which
//! scripts and service managers already know; the outcomes of rollout
//! commands use small numbers of their own.

/// Success.
pub const EX_OK: u8 = 0;
/// The server refused the request (failing checks, unknown service, busy...).
pub(crate) const EX_REFUSED: u8 = 1;
/// The change was made, failed, and every proxy was put back.
pub(crate) const EX_ROLLED_BACK: u8 = 2;
/// An operator aborted the operation.
pub(crate) const EX_ABORTED: u8 = 3;
/// The change is in effect but not every proxy confirmed it (or its checks
/// failed afterwards): a rollback or an undo, which teal never undoes.
pub(crate) const EX_UNCONFIRMED: u8 = 4;
/// teal restarted while the operation ran, before its step was committed.
pub(crate) const EX_STOPPED: u8 = 5;
/// Bad command line (sysexits EX_USAGE), or an unknown group for `render`.
pub const EX_USAGE: u8 = 64;
/// The input has problems: a config file, a tokens file (EX_DATAERR).
pub const EX_DATAERR: u8 = 65;
/// A file cannot be read (EX_NOINPUT).
pub const EX_NOINPUT: u8 = 66;
/// Something teal needs is not there: the admin API, a port (EX_UNAVAILABLE).
pub(crate) const EX_UNAVAILABLE: u8 = 69;
/// An internal error: a bug, not bad input (EX_SOFTWARE).
pub(crate) const EX_SOFTWARE: u8 = 70;
/// The state directory cannot be created or used (EX_CANTCREAT).
pub const EX_CANTCREAT: u8 = 73;
/// Writing output failed (EX_IOERR).
pub(crate) const EX_IOERR: u8 = 74;
/// The admin token is missing or wrong (EX_NOPERM).
pub(crate) const EX_NOPERM: u8 = 77;
/// Stopped following on Ctrl-C (128 + SIGINT); the operation goes on.
pub(crate) const EX_INTERRUPTED: u8 = 130;
