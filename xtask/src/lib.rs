//! kovn's developer tasks as a library, so the privileged tests in `tests/` drive the same lab
//! code as `cargo xtask lab ...`.

pub mod cmd;
pub mod demo;
pub mod image;
pub mod kernels;
pub mod lab;
pub mod modgraph;
pub mod soak;
pub mod vmlab;
