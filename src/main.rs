//! The `teal` command.

fn main() {}
