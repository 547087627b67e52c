//! `understudy-loadgen`: a multi-process, multi-threaded test workload that writes replication
//! records straight into the ring named by `UNDERSTUDY_RING`, as the interceptors would.
//! Used by the replication tests and the benchmark; not installed for users.
//!
//! `understudy-loadgen --procs P --threads T --messages N [--size S] [--output-every K]
//! [--pause-us U] [--hold FILE]`:
//! P processes (this one and P-1 children) × T threads × N records of S bytes each. With
//! `--output-every K`, every K-th record is an "output": the thread waits for the ring's
//! `ack_seq` to cover it (sync mode) before going on. With `--pause-us U`, each thread sleeps
//! U µs after every 64 records (to stretch a test run over time). With `--hold FILE`, each
//! thread waits before its last record until FILE exists (a test keeps the workload running
//! for as long as it needs, however fast or slow the machine).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let procs = arg(&args, "--procs", 1);
    let threads = arg(&args, "--threads", 1);
    let messages = arg(&args, "--messages", 1000);
    let size = usize::try_from(arg(&args, "--size", 64))
        .unwrap_or(64)
        .max(24);
    let output_every = arg(&args, "--output-every", 0);
    let child_index = arg(&args, "--child", 0);
    let pause_us = arg(&args, "--pause-us", 0);
    let hold: Option<PathBuf> = args
        .iter()
        .position(|a| a == "--hold")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let Some(ring) = std::env::var_os("UNDERSTUDY_RING").map(PathBuf::from) else {
        eprintln!("understudy-loadgen: UNDERSTUDY_RING is not set");
        return ExitCode::FAILURE;
    };
    let mut children = Vec::new();
    if child_index == 0 {
        for c in 1..procs {
            let mut cmd = Command::new(std::env::current_exe().expect("own exe"));
            cmd.args(&args[1..]).arg("--child").arg(c.to_string());
            children.push(cmd.spawn().expect("spawn child"));
        }
    }
    let producer = match shmring::RingProducer::open(&ring) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("understudy-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid = std::process::id();
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (producer, failed, hold) = (&producer, &failed, &hold);
            s.spawn(move || {
                let mut payload = vec![0u8; size];
                for i in 0..messages {
                    if i + 1 == messages {
                        if let Some(f) = hold {
                            while !f.exists() {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    let head = format!("p{child_index}/{pid} t{t} m{i} ");
                    let n = head.len().min(size);
                    payload[..n].copy_from_slice(&head.as_bytes()[..n]);
                    for (k, b) in payload[n..].iter_mut().enumerate() {
                        *b = u8::try_from((k + usize::try_from(i).unwrap_or(0)) % 251).unwrap_or(0);
                    }
                    // Workaround (reported to the ring's owners): a producer that reads a
                    // stale head can wrongly find the ring full, and its liveness check of the
                    // consumer fails inside the application's PID namespace, where the
                    // consumer's pid is not visible. Nothing was reserved then: retry, bounded.
                    let mut tries = 0;
                    let pushed = loop {
                        match producer.push(&payload) {
                            Err(shmring::RingError::ConsumerGone { .. }) if tries < 200 => {
                                tries += 1
                            }
                            r => break r,
                        }
                    };
                    let seq = match pushed {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("understudy-loadgen: push: {e}");
                            failed.store(true, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                    };
                    if pause_us > 0 && i % 64 == 63 {
                        std::thread::sleep(Duration::from_micros(pause_us));
                    }
                    if output_every > 0 && (i + 1) % output_every == 0 {
                        if let Err(e) = producer.wait_ack(seq, Duration::from_secs(30)) {
                            eprintln!("understudy-loadgen: waiting for ack of {seq}: {e}");
                            failed.store(true, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                    }
                }
            });
        }
    });
    for mut c in children {
        if !c.wait().map(|s| s.success()).unwrap_or(false) {
            failed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    if failed.load(std::sync::atomic::Ordering::SeqCst) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
