//! Files read within a limit: the config, certificates and keys are all
//! read here, so none is ever read whole past its bound. The lowest layer
//! both the config and the transport use.

/// Reads at most `max_bytes + 1` bytes of a file: enough for the caller to
/// tell that it is too large (a config, a certificate), without reading a
/// huge file (or an endless one, like a device) into memory first.
pub(crate) fn read_bounded(path: &std::path::Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let cap = max_bytes.saturating_add(1);
    // The length is only a hint (it is 0 for devices and pipes).
    let hint = file.metadata().map(|m| m.len().min(cap)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}
