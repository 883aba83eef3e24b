//! `cargo xtask demo`: the README's main command. Brings the lab up, starts one kovn-monitor
//! per node (as a DaemonSet would), runs the traffic mix over and over, and shows what the
//! monitors see: flows with pod names and scenarios, refreshed, until Ctrl-C (or
//! `--duration`). Cleans up on the way out unless `--keep`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::cmd;
use crate::lab::{self, Lab, UpOptions, UpOutcome};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Lab name (namespaces NAME-node1, ...).
    #[arg(long, default_value = "kovn")]
    pub name: String,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Seconds between screens.
    #[arg(long, default_value_t = 3)]
    pub refresh: u64,
    /// Flows shown per node and screen.
    #[arg(long, default_value_t = 12)]
    pub rows: usize,
    /// Leave the lab and the monitors running on exit (then: `cargo xtask lab down`).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: &DemoArgs, monitor_bin: &Path) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    println!("==> bringing up the lab {:?} (OVS + OVN + Geneve in network namespaces)", args.name);
    let opts = UpOptions { name: args.name.clone(), ..UpOptions::default() };
    let lab = match lab::up(&opts)? {
        UpOutcome::Started(lab) => lab,
        UpOutcome::AlreadyRunning(lab) => {
            println!("    (it was already running; using it)");
            lab
        }
    };
    let result = show(args, &lab, monitor_bin, &stop);
    if args.keep {
        println!(
            "==> leaving the lab and monitors running (--keep); `cargo xtask lab down --name {}` removes them",
            args.name
        );
    } else {
        println!("==> cleaning up");
        if let Err(e) = lab::monitors::stop(&lab) {
            eprintln!("    stopping monitors: {e:#}");
        }
        lab::down(&lab.name).context("lab down")?;
    }
    result
}

fn show(args: &DemoArgs, lab: &Lab, monitor_bin: &Path, stop: &Arc<AtomicBool>) -> Result<()> {
    println!("==> starting one kovn-monitor per node");
    lab::monitors::start(lab, monitor_bin)?;
    let urls: Vec<(String, String)> =
        lab.nodes.iter().map(|n| (n.name.clone(), format!("http://{}:9474", n.ip))).collect();
    let traffic = {
        let lab = lab.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seed = 1;
            while !stop.load(Ordering::SeqCst) {
                let opts = lab::TrafficOptions { duration: Duration::from_secs(8), seed };
                if let Err(e) = lab::traffic::run(&lab, &opts, |_| {}) {
                    eprintln!("traffic: {e:#}");
                    std::thread::sleep(Duration::from_secs(1));
                }
                seed += 1;
            }
        })
    };
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs(s));
    let bin = monitor_bin.to_str().context("monitor path is not UTF-8")?;
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        println!(
            "\n======== kovn demo, {:>4}s — traffic mix running; Ctrl-C to stop ========",
            started.elapsed().as_secs()
        );
        for (node, url) in &urls {
            println!("--- {node}: {url}/api/v1/flows (pod-to-pod and service flows, most recent first)");
            let out = cmd::output(
                bin,
                &[
                    "flows",
                    "--endpoint",
                    url,
                    "--scenario",
                    "pod_to_pod_cross_node",
                    "--scenario",
                    "pod_to_pod_same_node",
                    "--scenario",
                    "pod_to_service",
                    "--limit",
                    &args.rows.to_string(),
                ],
            )?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                println!("  ({})", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        println!(
            "\ntry: {bin} alerts --endpoint {}\n     {bin} flows --endpoint {} --state unanswered\n     cargo xtask lab fault --name {} reply-drop --pod web-2   (then `cargo xtask lab heal --name {}`)",
            urls[0].1, urls[0].1, lab.name, lab.name
        );
        let until = Instant::now() + Duration::from_secs(args.refresh);
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = traffic.join();
    Ok(())
}
