//! zdtm-style suite: every workload in `tests/zdtm/` builds some state, is checkpointed and
//! killed while running (`understudy checkpoint --pid`), restored (`understudy restore`), then
//! checks its own state and reports PASS or FAIL. See `docs/testing.md`.
//!
//! Each workload has two tests: `baseline` runs it without any checkpoint (so a FAIL in the
//! checkpointed run is the engine's, not the workload's) and `checkpoint_restore` runs it through
//! the engine. Needs root and `cc`; skips with a message otherwise.
#![forbid(unsafe_code)]

#[path = "zdtm/harness.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use harness::{can_run, checkpoint, own_pids, pid_free, proc_state, restore, understudy, Workload};

/// How a workload goes through the engine.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// checkpoint, restore, check.
    Once,
    /// checkpoint, restore, let it run, checkpoint again, restore again, check.
    Twice,
    /// checkpoint --leave-running (the tree runs on untouched), let it run, kill it, restore
    /// the image (back to the checkpointed state), check.
    LeaveRunning,
}

fn baseline(name: &str) {
    if !can_run(name) {
        return;
    }
    let mut w = start(name);
    sleep(Duration::from_millis(50));
    w.expect_pass();
}

fn start(name: &str) -> Workload {
    match Workload::start(name) {
        Ok(w) => w,
        Err(e) => panic!("{name}: could not start: {e:?}"),
    }
}

fn checkpoint_restore(name: &str, mode: Mode) {
    if !can_run(name) {
        return;
    }
    let mut w = start(name);
    // Let it run a little past readiness, so it is caught in the middle of its work.
    sleep(Duration::from_millis(100));
    let image = w.image_dir("1");
    if let Mode::LeaveRunning = mode {
        let before = harness::checkpoint_leave_running(&mut w, &image);
        sleep(Duration::from_millis(200));
        harness::kill_and_wait_free(&w, &before);
        restore(&mut w, &image, &before);
        w.expect_pass();
        return;
    }
    let before = checkpoint(&mut w, &image);
    restore(&mut w, &image, &before);
    if let Mode::Twice = mode {
        sleep(Duration::from_millis(200));
        let image2 = w.image_dir("2");
        let before2 = checkpoint(&mut w, &image2);
        assert_eq!(
            before, before2,
            "{name}: tree changed between the two checkpoints"
        );
        restore(&mut w, &image2, &before2);
    }
    w.expect_pass();
}

/// `zdtm!(name)` declares `name::baseline` and `name::checkpoint_restore` for
/// `tests/zdtm/name.c`; `ignore = "why"` marks the checkpointed run ignored, with the reason.
macro_rules! zdtm {
    ($name:ident $(, mode = $mode:ident)? $(, ignore = $why:literal)?) => {
        mod $name {
            #[test]
            fn baseline() {
                super::baseline(stringify!($name));
            }

            #[test]
            $(#[ignore = $why])?
            fn checkpoint_restore() {
                #[allow(unused_mut, unused_assignments)]
                let mut mode = super::Mode::Once;
                $(mode = super::Mode::$mode;)?
                super::checkpoint_restore(stringify!($name), mode);
            }
        }
    };
}

zdtm!(mem_patterns);
zdtm!(threads_mutex);
zdtm!(pipe_children);
zdtm!(shm_memfd);
zdtm!(signals);
zdtm!(sleep_read);
zdtm!(file_offsets);
zdtm!(sigaltstack);
zdtm!(itimer);
zdtm!(fifo);
zdtm!(proc_attrs);
zdtm!(proc_name);
zdtm!(bigmem);
zdtm!(vdso_rseq);
zdtm!(creds);
zdtm!(sessions);
zdtm!(sparse_mem);
zdtm!(seccomp);
zdtm!(exe_link);
zdtm!(posix_timer);
zdtm!(zombies);
zdtm!(pipe_widowed);

/// POSIX timers restored without `PR_TIMER_CREATE_RESTORE_IDS` (the path for kernels before
/// 6.17, forced by `UNDERSTUDY_NO_TIMER_RESTORE_IDS`): the lowest id is a gap, filled by a
/// timer deleted again, and every id still comes back.
#[test]
fn posix_timer_ids_without_the_restore_ids_prctl() {
    if !can_run("posix timers without PR_TIMER_CREATE_RESTORE_IDS") {
        return;
    }
    let mut w = start("posix_timer");
    sleep(Duration::from_millis(100));
    let image = w.image_dir("1");
    checkpoint(&mut w, &image);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .env("UNDERSTUDY_NO_TIMER_RESTORE_IDS", "1")
        .args(["restore", "--image", path(&image)])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run understudy restore");
    if !out.status.success() {
        w.keep();
        panic!(
            "restore without the prctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    w.expect_pass();
}

/// The zombies of a tree (children that ended, not yet reaped) are in the image: `inspect`
/// lists them with how they ended (text and `--json`), and the restored tree has them again as
/// zombies of the same parent, so a second checkpoint and restore keep them too.
#[test]
fn zombies_are_listed_by_inspect_and_survive_two_checkpoints() {
    if !can_run("zombies in inspect") {
        return;
    }
    let mut w = start("zombies");
    let image = w.image_dir("1");
    let before = checkpoint(&mut w, &image);
    let json = understudy(&w.dir, &["inspect", path(&image), "--json"]);
    assert!(json.status.success(), "inspect --json: {}", json.describe());
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("inspect json");
    assert_eq!(v["format_version"], 4, "an image with zombies is version 4");
    let zombies = v["zombies"].as_array().expect("zombies listed");
    assert_eq!(zombies.len(), 2, "{zombies:?}");
    let mut ends: Vec<String> = zombies
        .iter()
        .map(|z| {
            assert_eq!(z["ppid"], w.root, "zombie under the root: {z}");
            assert_eq!(z["sid"], w.root, "zombie in the root's session: {z}");
            z["end"].to_string()
        })
        .collect();
    ends.sort();
    assert_eq!(
        ends,
        [
            r#"{"code":7,"how":"exited"}"#,
            r#"{"core_dumped":false,"how":"killed","signal":15}"#
        ]
    );
    let zpids: Vec<i64> = zombies.iter().filter_map(|z| z["pid"].as_i64()).collect();
    let text = understudy(&w.dir, &["inspect", path(&image)]);
    assert!(
        text.stdout.contains("exited with code 7, not yet reaped")
            && text.stdout.contains("killed by signal 15, not yet reaped"),
        "inspect text: {}",
        text.describe()
    );
    restore(&mut w, &image, &before);
    for &z in &zpids {
        let z = i32::try_from(z).expect("pid");
        assert_eq!(proc_state(z), Some('Z'), "restored pid {z} is no zombie");
    }
    let image2 = w.image_dir("2");
    let before2 = checkpoint(&mut w, &image2);
    restore(&mut w, &image2, &before2);
    w.expect_pass();
}

/// Two checkpoints in a row of the same multi-process and multi-threaded trees.
mod twice {
    zdtm!(pipe_children, mode = Twice);
    zdtm!(threads_mutex, mode = Twice);
    use super::{baseline, checkpoint_restore, Mode};
}

/// `checkpoint --leave-running`: the tree runs on untouched, and the image restores later.
mod leave_running {
    zdtm!(pipe_children, mode = LeaveRunning);
    zdtm!(threads_mutex, mode = LeaveRunning);
    zdtm!(shm_memfd, mode = LeaveRunning);
    use super::{baseline, checkpoint_restore, Mode};
}

/// Restoring an image while its tree still runs (pids taken) must fail with a message naming a
/// taken pid, restore nothing, and leave the running tree untouched.
#[test]
fn restore_refuses_taken_pids() {
    if !can_run("taken pids") {
        return;
    }
    let mut w = start("pipe_children");
    let image = w.image_dir("live");
    let before = harness::checkpoint_leave_running(&mut w, &image);
    let run = understudy(&w.dir, &["restore", "--image", path(&image)]);
    assert!(
        !run.status.success(),
        "restore over a running tree succeeded: {}",
        run.describe()
    );
    let named = before
        .iter()
        .any(|p| run.stderr.contains(&p.pid.to_string()));
    assert!(
        named,
        "the refusal names no pid of the tree: {}",
        run.describe()
    );
    assert!(
        run.stderr.contains("taken"),
        "the refusal does not say the pid is taken: {}",
        run.describe()
    );
    assert_eq!(w.snapshot(), before, "the running tree changed");
    w.expect_pass();
}

/// A child holding a resource the engine cannot checkpoint yet: `checkpoint` must refuse it,
/// naming the process and the resource, and leave the whole tree running and untouched (same
/// processes, not stopped, not traced, state intact: the workload's own check passes).
fn refused_and_left_running(kind: &str, word: &str) {
    refused_workload_left_running("unsupported", &[kind], kind, word, true);
}

/// Runs `workload ARGS`, expects `checkpoint` to refuse it with a message containing `word` and
/// naming the holder (the root's child when `child_holds`, else any process of the tree), and
/// the tree to be left exactly as it was.
fn refused_workload_left_running(
    workload: &str,
    args: &[&str],
    kind: &str,
    word: &str,
    child_holds: bool,
) {
    if !can_run(kind) {
        return;
    }
    let mut w = match Workload::start_with(workload, args) {
        Ok(w) => w,
        Err(harness::StartError::Launcher(3, _)) => {
            eprintln!("skipped: {kind} is unavailable on this kernel");
            return;
        }
        Err(e) => panic!("{kind}: could not start: {e:?}"),
    };
    let before = w.snapshot();
    // Who may be named as the holder: the root's child, or any process of the tree.
    let holders: Vec<i32> = before
        .iter()
        .map(|p| p.pid)
        .filter(|&p| !child_holds || p != w.root)
        .collect();
    let image = w.image_dir("refused");
    let root = w.root.to_string();
    let run = understudy(
        &w.dir,
        &["checkpoint", "--pid", &root, "--image", path(&image)],
    );
    assert!(
        !run.status.success(),
        "checkpoint of a {kind} holder succeeded: {}",
        run.describe()
    );
    let msg = run.stderr.to_lowercase();
    assert!(
        msg.contains(word),
        "message does not name {word}: {}",
        run.describe()
    );
    assert!(
        holders.iter().any(|h| msg.contains(&h.to_string())),
        "message does not name the holder (one of {holders:?}): {}",
        run.describe()
    );
    // Untouched: same tree, running (not stopped), not traced.
    assert_eq!(
        w.snapshot(),
        before,
        "tree changed after the refused checkpoint"
    );
    for p in &before {
        let state = proc_state(p.pid);
        assert!(
            matches!(state, Some('S' | 'R' | 'D')),
            "pid {} left in state {state:?} after the refused checkpoint",
            p.pid
        );
        let status = fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap_or_default();
        assert!(
            status.contains("TracerPid:\t0\n"),
            "pid {} still traced:\n{status}",
            p.pid
        );
    }
    w.expect_pass();
}

#[test]
fn unsupported_sysv_shm_is_refused_and_left_running() {
    refused_workload_left_running("sysv_shm", &[], "SysV shared memory", "sysv", false);
}

/// A POSIX timer on `CLOCK_THREAD_CPUTIME_ID` (bound to a thread the kernel does not name).
#[test]
fn unsupported_thread_cpu_timer_is_refused_and_left_running() {
    refused_workload_left_running(
        "unsupported",
        &["thread_cpu_timer"],
        "thread CPU-time timer",
        "clock_thread_cputime_id",
        true,
    );
}

#[test]
fn unsupported_io_uring_is_refused_and_left_running() {
    refused_and_left_running("io_uring", "io_uring");
}

#[test]
fn unsupported_socket_is_refused_and_left_running() {
    refused_and_left_running("socket", "socket");
}

#[test]
fn unsupported_epoll_registration_is_refused_and_left_running() {
    refused_and_left_running("epoll", "registered fd");
}

#[test]
fn unsupported_inotify_is_refused_and_left_running() {
    refused_and_left_running("inotify", "inotify");
}

/// A 1 GiB sparse mapping with 3 touched pages must not make a big image: only present pages
/// are dumped.
#[test]
fn sparse_memory_makes_a_small_image() {
    if !can_run("sparse image") {
        return;
    }
    let mut w = start("sparse_mem");
    let image = w.image_dir("sparse");
    let before = checkpoint(&mut w, &image);
    let size: u64 = walk(&image)
        .iter()
        .map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        size < 16 << 20,
        "image of a mostly untouched 1 GiB mapping holds {size} bytes"
    );
    restore(&mut w, &image, &before);
    w.expect_pass();
}

/// Copies an image directory, hard-linking every file except `changed`, which `edit` writes.
fn variant(src: &Path, dst: &Path, changed: &Path, edit: impl Fn(Vec<u8>) -> Vec<u8>) {
    for entry in walk(src) {
        let rel = entry.strip_prefix(src).expect("inside image");
        let to = dst.join(rel);
        fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        if entry == changed {
            fs::write(&to, edit(fs::read(&entry).expect("read image file"))).expect("write");
        } else {
            fs::hard_link(&entry, &to).expect("link image file");
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read image dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn path(p: &Path) -> &str {
    harness::path_str(p)
}

/// A damaged image must be refused with a message naming the file, and nothing of the tree
/// may be left running; the intact image then restores and passes.
#[test]
fn damaged_images_are_refused_and_nothing_is_half_restored() {
    if !can_run("damaged images") {
        return;
    }
    let mut w = start("mem_patterns");
    let image = w.image_dir("good");
    let before = checkpoint(&mut w, &image);
    let files = walk(&image);
    assert!(
        !files.is_empty(),
        "checkpoint wrote no files into {}",
        image.display()
    );

    let missing = w.dir.join("no-such-image");
    let run = understudy(&w.dir, &["restore", "--image", path(&missing)]);
    assert!(!run.status.success(), "restore of a missing dir succeeded");
    assert!(
        run.stderr.contains("no-such-image"),
        "message does not name the dir: {}",
        run.describe()
    );

    // Each file truncated, and each file with one byte flipped in its middle (cap the work).
    let mut cases = 0;
    for (i, file) in files.iter().enumerate().take(16) {
        let len = fs::metadata(file).expect("stat").len();
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let truncated = w.dir.join(format!("truncated-{i}"));
        variant(&image, &truncated, file, |mut b| {
            b.truncate(b.len() / 2);
            b
        });
        let flipped = w.dir.join(format!("flipped-{i}"));
        if len > 0 {
            variant(&image, &flipped, file, |mut b| {
                let mid = b.len() / 2;
                b[mid] ^= 0x5a;
                b
            });
        }
        for (kind, dir) in [("truncated", &truncated), ("corrupted", &flipped)] {
            if !dir.exists() {
                continue;
            }
            cases += 1;
            let run = understudy(&w.dir, &["restore", "--image", path(dir)]);
            assert!(
                !run.status.success(),
                "restore of an image with {name} {kind} succeeded"
            );
            assert!(
                run.stderr.contains(&name),
                "refusal of {kind} {name} does not name the file: {}",
                run.describe()
            );
            let alive = own_pids(&w.dir, &w.bin);
            assert!(
                alive.is_empty(),
                "{kind} {name}: processes {alive:?} left after refusal"
            );
            // Its PIDs must come free (bounded), so that a good restore can follow.
            let start = std::time::Instant::now();
            while !before.iter().all(|p| pid_free(p.pid)) {
                assert!(
                    start.elapsed() < harness::EXIT_TIMEOUT,
                    "{kind} {name}: pids still taken {:?} after the refusal",
                    harness::EXIT_TIMEOUT
                );
                sleep(Duration::from_millis(10));
            }
            let _ = fs::remove_dir_all(dir);
        }
    }
    assert!(cases > 0);
    restore(&mut w, &image, &before);
    w.expect_pass();
}

/// An application started with `understudy run` (own PID namespace, init as PID 1) is
/// checkpointed by name (`understudy checkpoint NAME`) and restored with the same pids inside
/// its namespace (its outer pids are whatever the host gives: `checkpoint` does not wait for
/// the old ones to be reaped).
#[test]
fn run_launched_app_checkpointed_by_name() {
    run_launched("pipe_children");
}

/// The same with 8 threads: their tids inside the namespace are kept, the outer ones are new.
#[test]
fn run_launched_threads_checkpointed_by_name() {
    run_launched("threads_mutex");
}

/// POSIX timers in a PID namespace: a `SIGEV_THREAD_ID` target is the tid inside it.
#[test]
fn run_launched_posix_timers_checkpointed_by_name() {
    run_launched("posix_timer");
}

/// Zombies in a PID namespace: re-created with their pids inside it, under their parent.
#[test]
fn run_launched_zombies_checkpointed_by_name() {
    run_launched("zombies");
}

fn run_launched(workload: &str) {
    if !can_run("run + checkpoint NAME") {
        return;
    }
    let mut w = Workload::start_under_run(workload, "zdtm-app");
    let state = w.state_dir();
    let before = w.snapshot();
    assert!(
        before.iter().any(|p| p.pid == w.root),
        "the init is not part of the run"
    );
    let before_ns = harness::ns_snapshot(&w);
    assert!(
        before_ns.iter().any(|p| p.pid == 1 && p.ppid == 0),
        "the init is not pid 1 of its namespace: {before_ns:?}"
    );
    let image = w.image_dir("byname");
    let run = understudy(
        &w.dir,
        &[
            "--state-dir",
            path(&state),
            "checkpoint",
            "zdtm-app",
            "--image",
            path(&image),
        ],
    );
    if !run.status.success() {
        w.keep();
        panic!(
            "checkpoint by name failed: {}\nlog:\n{}",
            run.describe(),
            w.log()
        );
    }
    // Every process is gone (zombies waiting for the host's init may keep their outer pids).
    let left: Vec<i32> = before
        .iter()
        .map(|p| p.pid)
        .filter(|&p| !pid_free(p) && !matches!(proc_state(p), Some('Z' | 'X')))
        .collect();
    assert!(
        left.is_empty(),
        "pids {left:?} still running after checkpoint"
    );
    harness::restore_pidns(&mut w, &image, &before_ns);
    w.expect_pass();
}
