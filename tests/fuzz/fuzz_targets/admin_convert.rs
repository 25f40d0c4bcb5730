//! libFuzzer entry point for [`targets::admin_convert`]; the body is shared with the
//! corpus replay in `tests/server/fuzz_replay.rs`.
#![no_main]

#[allow(dead_code)]
#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::admin_convert(data));
