//! Running external programs with argument lists (never through a shell), with context in errors.

use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, bail};

/// Runs `program args...`, fails with the program's stderr when it exits non-zero.
pub fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    let out = output(program, args)?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            program,
            display_args(args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `program args...` and returns its output whatever the exit status.
pub fn output<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is it installed? run scripts/setup.sh)"))
}

/// Runs and returns stdout as a string.
pub fn stdout<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(program, args)?.stdout).into_owned())
}

pub fn display_args<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}
