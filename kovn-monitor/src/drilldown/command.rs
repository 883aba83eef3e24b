//! Running the read-only OVS/OVN commands: an argument list (never a shell), a timeout,
//! bounded output.

use std::time::Duration;

use super::TraceError;

/// The most stdout a command may give (a `dump-flows` of a big br-int is a few MiB): more is
/// an error, and what is read is bounded to it (the rest is read and discarded).
pub const COMMAND_OUTPUT_MAX: usize = 16 << 20;
/// The most stderr kept (only its first line is shown).
const COMMAND_STDERR_MAX: usize = 64 << 10;

/// Reads `r` to its end, keeping at most `limit` bytes; true when there was more.
async fn read_bounded(
    r: Option<impl tokio::io::AsyncRead + Unpin>,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    use tokio::io::AsyncReadExt as _;
    let Some(mut r) = r else { return Ok((Vec::new(), false)) };
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut over = false;
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok((kept, over));
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
        over |= n > room;
    }
}

/// Runs one read-only command: argument list, no shell, stdin closed, killed at `timeout`,
/// stdout bounded by [`COMMAND_OUTPUT_MAX`].
pub async fn run_command(program: &str, args: &[String], timeout: Duration) -> Result<String, TraceError> {
    run_command_bounded(program, args, timeout, COMMAND_OUTPUT_MAX).await
}

pub async fn run_command_bounded(
    program: &str,
    args: &[String],
    timeout: Duration,
    limit: usize,
) -> Result<String, TraceError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env("LC_ALL", "C")
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TraceError::Unavailable(format!(
                "{program} not found in PATH (install the OVS/OVN client tools: openvswitch-common, ovn-common)"
            )));
        }
        Err(e) => return Err(TraceError::Failed(format!("{program}: {e}"))),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let (out, err) = tokio::join!(read_bounded(stdout, limit), read_bounded(stderr, COMMAND_STDERR_MAX));
        Ok::<_, std::io::Error>((out?, err?, child.wait().await?))
    };
    let ((out, over), (err, _), status) = match tokio::time::timeout(timeout, work).await {
        Err(_) => return Err(TraceError::Failed(format!("{program} timed out after {timeout:?}"))),
        Ok(Err(e)) => return Err(TraceError::Failed(format!("{program}: {e}"))),
        Ok(Ok(r)) => r,
    };
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        return Err(TraceError::Failed(format!("{program} failed ({status}): {first}")));
    }
    if over {
        return Err(TraceError::Failed(format!("{program}: output larger than {limit} bytes")));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

pub(super) fn shown(program: &str, args: &[String]) -> String {
    std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}
