#![no_std]
// The programs live in the `kovn` binary (src/main.rs). This empty library exists so
// kovn-monitor can build-depend on this crate and be rebuilt when it changes (aya-template).
